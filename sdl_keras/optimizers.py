"""The optimizer and schedule of a run, as the official recipe runs them (Sec. 4.1 and the
official train.py): Adam with weight decay on kernels only, and a one-cycle cosine
learning rate (optionally cycling Adam's beta_1) computed as PyTorch's
`OneCycleLR(pct_start=0.1)` computes it.

- `OneCycleSchedule`: torch's `OneCycleLR` with its defaults (cosine annealing, two
  phases, div_factor 25, final_div_factor 1e4, momentum 0.95 -> 0.85 -> 0.95), step by
  step; the learning rate is computed in float64, as torch computes it in Python floats.
- `SDLAdam`: Adam whose weight decay reaches only kernels (variables of two or more
  dimensions: not biases, not normalization parameters), as the official
  `add_weight_decay` groups them; decoupled (AdamW's "true weight decay", the paper's
  text, the default) or coupled (an L2 term added to the gradient, what the official
  `torch.optim.Adam(params=add_weight_decay(...))` does).
"""

import math

import keras
from keras import ops


def decays(variable):
    """Whether a variable gets weight decay: kernels only (the official `add_weight_decay`
    leaves out 1-D parameters and biases)."""
    return len(variable.shape) > 1


@keras.saving.register_keras_serializable(package="sdl_keras")
class OneCycleSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """The learning rate of step `step` (0 for the first update) as PyTorch's
    `OneCycleLR(max_lr, total_steps, pct_start=warmup_fraction)` sets it after `step` calls
    of `scheduler.step()`: a cosine warm-up from max/div_factor to the maximum over the
    first warmup_fraction x total_steps steps, then a cosine down to
    max/div_factor/final_div_factor at the last step. `momentum(step)` is the beta_1 that
    `OneCycleLR(cycle_momentum=True)` sets, cycled inversely (max -> base -> max).

    Shape contract: step () int -> learning rate () float64.
    """

    def __init__(self, max_learning_rate, total_steps, warmup_fraction=0.1, div_factor=25.0,
                 final_div_factor=1e4, base_momentum=0.85, max_momentum=0.95):
        if int(total_steps) < 1 or not 0.0 <= float(warmup_fraction) <= 1.0:
            raise ValueError(f"OneCycleSchedule needs total_steps >= 1 and 0 <= warmup_fraction <= 1, got "
                             f"{total_steps}, {warmup_fraction}.")
        self.max_learning_rate = float(max_learning_rate)
        self.total_steps = int(total_steps)
        self.warmup_fraction = float(warmup_fraction)
        self.div_factor = float(div_factor)
        self.final_div_factor = float(final_div_factor)
        self.base_momentum = float(base_momentum)
        self.max_momentum = float(max_momentum)

    def _anneal(self, step, start_value, peak_value, end_value):
        f64 = lambda value: ops.convert_to_tensor(value, "float64")  # noqa: E731
        # torch's phases: the first ends at step pct_start * total - 1, the second at total - 1.
        warmup_end = f64(float(self.warmup_fraction * self.total_steps) - 1.0)
        last = f64(float(self.total_steps - 1))
        step = ops.cast(step, "float64")
        warming = step <= warmup_end
        begin = ops.where(warming, f64(0.0), warmup_end)
        span = ops.where(warming, warmup_end, last) - begin
        # A phase of no length (one step in all) is at its end.
        pct = ops.where(span > 0, (step - begin) / ops.where(span > 0, span, f64(1.0)), f64(1.0))
        start = ops.where(warming, f64(start_value), f64(peak_value))
        end = ops.where(warming, f64(peak_value), f64(end_value))
        return end + (start - end) / f64(2.0) * (ops.cos(f64(math.pi) * pct) + f64(1.0))

    def __call__(self, step):
        initial = self.max_learning_rate / self.div_factor
        return self._anneal(step, initial, self.max_learning_rate, initial / self.final_div_factor)

    def momentum(self, step):
        """beta_1 at `step` (float64)."""
        return self._anneal(step, self.max_momentum, self.base_momentum, self.max_momentum)

    def get_config(self):
        return {
            "max_learning_rate": self.max_learning_rate, "total_steps": self.total_steps,
            "warmup_fraction": self.warmup_fraction, "div_factor": self.div_factor,
            "final_div_factor": self.final_div_factor, "base_momentum": self.base_momentum,
            "max_momentum": self.max_momentum,
        }


@keras.saving.register_keras_serializable(package="sdl_keras")
class SDLAdam(keras.optimizers.Adam):
    """Adam with weight decay on kernels only (`decays`), decoupled or coupled, and beta_1
    optionally cycled by a `OneCycleSchedule` learning rate (`cycle_momentum`).

    Decoupled (`decoupled_weight_decay=True`): each step first shrinks a kernel by
    learning_rate x weight_decay x kernel, as AdamW and torch's AdamW. Coupled: the
    gradient of a kernel gets weight_decay x kernel added before the Adam update, as
    torch's `Adam(weight_decay=...)` (the official code). Biases and normalization
    parameters are never decayed.

    Args:
        learning_rate: a float or a schedule (a `OneCycleSchedule` for `cycle_momentum`).
        weight_decay: the decay factor (3e-4 in the paper).
        decoupled_weight_decay: decoupled (True) or coupled L2 (False).
        cycle_momentum: beta_1 follows `learning_rate.momentum(step)`.
        beta_1, beta_2, epsilon: Adam's (epsilon 1e-8, torch's default).
        **kwargs: the other `keras.optimizers.Optimizer` arguments (use_ema, ...).
    """

    def __init__(self, learning_rate=1e-4, weight_decay=0.0, decoupled_weight_decay=True, cycle_momentum=False,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, name="sdl_adam", **kwargs):
        kwargs.pop("amsgrad", None)
        super().__init__(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon,
                         weight_decay=(weight_decay or None) if decoupled_weight_decay else None, name=name, **kwargs)
        if cycle_momentum and not isinstance(learning_rate, OneCycleSchedule):
            raise ValueError("cycle_momentum needs a OneCycleSchedule learning rate, whose momentum() it follows.")
        self.schedule = learning_rate if cycle_momentum else None
        self.decay = float(weight_decay or 0.0)
        self.decoupled_weight_decay = bool(decoupled_weight_decay)
        self.cycle_momentum = bool(cycle_momentum)

    def build(self, var_list):
        if self.built:
            return
        # The decoupled decay (the base optimizer's) skips what is not a kernel.
        self.exclude_from_weight_decay(var_list=[v for v in var_list if not decays(v)])
        super().build(var_list)

    def update_step(self, gradient, variable, learning_rate):
        if self.decay and not self.decoupled_weight_decay and decays(variable):
            gradient = ops.add(ops.cast(gradient, variable.dtype), self.decay * variable)
        if not self.cycle_momentum:
            return super().update_step(gradient, variable, learning_rate)
        # Adam's update (and its bias correction) reads beta_1 once per variable: this
        # step's value, as torch's Adam reads the beta_1 OneCycleLR set.
        constant, self.beta_1 = self.beta_1, ops.cast(self.schedule.momentum(self.iterations), variable.dtype)
        try:
            return super().update_step(gradient, variable, learning_rate)
        finally:
            self.beta_1 = constant

    def get_config(self):
        config = super().get_config()
        config.pop("amsgrad", None)
        config.update(weight_decay=self.decay, decoupled_weight_decay=self.decoupled_weight_decay,
                      cycle_momentum=self.cycle_momentum)
        return config
