"""Reading the original BicycleGAN authors' released weights (junyanz/BicycleGAN) into bicycle runs."""
