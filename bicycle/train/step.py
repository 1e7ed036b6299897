"""One training iteration as a function over explicit state.

Capture-ready: static shapes, no host synchronisation (no .item(), no Python branch on tensor
values); the losses are returned as 0-dim device tensors and read only when logged.
Order: G and E step on the model's losses; then D and D2 step on the same fakes (detached) with
the same weights the G/E update saw; last, the moving averages of G and E follow (``train.ema``).
"""
from __future__ import annotations

from torch import Tensor

from bicycle.losses import discriminator_loss
from bicycle.nets import call_twice
from bicycle.train.state import TrainState


def train_step(state: TrainState, a: Tensor, b: Tensor, noise: dict[str, Tensor]) -> dict[str, Tensor]:
    """a: [N, Ca, S, S], b: [N, Cb, S, S], noise: per ``draw_noise``. Returns 0-dim detached losses."""
    nets, opt, setup = state.step_nets or state.nets, state.optimizers, state.loss_setup
    ge = state.model.losses(nets, a, b, noise, setup)
    ge_names = [k for k in ("E", "G") if k in opt]
    for k in ge_names:
        opt[k].zero_grad(set_to_none=True)
    ge.loss.backward()
    for k in ge_names:  # E, then G (as the reference)
        opt[k].step()

    d_total = None
    metrics = {k: v.detach() for k, v in ge.metrics.items()}
    for name, fake, real in ge.d_pairs:
        disc = getattr(nets, name)
        pred_fake, pred_real = call_twice(disc, (fake.detach(),), (real,))
        loss = discriminator_loss(pred_fake, pred_real, setup.gan_mode, setup.impl)
        metrics[name] = loss.detach()
        d_total = loss if d_total is None else d_total + loss
    d_names = [name for name, _, _ in ge.d_pairs]
    for k in d_names:
        opt[k].zero_grad(set_to_none=True)
    if d_total is not None:
        d_total.backward()
    for k in d_names:
        opt[k].step()
    if state.ema is not None:
        state.ema.update()
    if state.guard is not None:
        state.guard.record(metrics)
    return metrics
