"""A bicycle plugin skeleton: one z-injection strategy, and the other hooks commented out."""
