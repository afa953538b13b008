"""Speed on whatever accelerator is there: our Keras-on-JAX SDL model against the PyTorch
reference (timm's TResNet-M with the official per-image SDL loss) on the same device.

    python benchmarks/accelerator.py            # full sizes (a GPU: benchmarks/README.md's recipe)
    python benchmarks/accelerator.py --smoke    # every row at tiny sizes, on the CPU, in seconds

Rows:
  (a) Keras on JAX: TResNet-M at 224 px, bf16 mixed precision, batch 192, M=7 rows, SDLLoss
      over 925 random l2-normalised 300-d tag vectors, AdamW: a training step, and inference.
  (b) PyTorch: timm's tresnet_m with AMP (bf16 autocast), the same head and sizes: a training
      step with the official per-image SDL loss loop, one with a vectorized PyTorch loss
      (the loss's share of the step is their difference), and inference.
  (c) SDLLoss forward + backward alone, B=192 M=7 d=300 C=925: ours (jax.jit) against the
      official loop (PyTorch, on the same device).
  (d) evaluate_scores on 83,898 x 1,006 scores (NumPy, on the host).
Keras runs on the JAX backend (set here), so the script needs no TensorFlow.
"""

import os
import platform
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

flags.DEFINE_bool("smoke", False, "Every row at tiny sizes on the CPU (the CI check that the script runs).")
flags.DEFINE_integer("steps", 20, "Timed steps per row (after warm-up).")
flags.DEFINE_integer("warmup", 3, "Untimed steps per row (compilation, autotuning).")
FLAGS = flags.FLAGS

FULL = dict(image_size=224, batch=192, rows=7, dim=300, tags=925, eval_images=83898, eval_tags=1006, eval_unseen=81,
            tresnet=None)
# Tiny: a TResNet of one block per stage at width 1/4 (the same code path as TResNet-M).
SMOKE = dict(image_size=32, batch=4, rows=3, dim=16, tags=20, eval_images=2000, eval_tags=100, eval_unseen=10,
             tresnet=([1, 1, 1, 1], 0.25))


def synthetic(sizes, seed=0):
    """Images in [0, 255], labels with 1-7 positives per image, l2-normalised tag vectors."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (sizes["batch"], sizes["image_size"], sizes["image_size"], 3)).astype("float32")
    vectors = rng.standard_normal((sizes["tags"], sizes["dim"])).astype("float32")
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    labels = np.zeros((sizes["batch"], sizes["tags"]), "float32")
    for i, count in enumerate(rng.integers(1, 8, size=sizes["batch"])):
        labels[i, rng.choice(sizes["tags"], size=min(count, sizes["tags"]), replace=False)] = 1
    return images, labels, vectors


def timed(step, warmup, steps, sync=lambda value: value):
    """Seconds per step (median of the timed steps; each is synchronized)."""
    for _ in range(warmup):
        sync(step())
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        sync(step())
        times.append(time.perf_counter() - start)
    return float(np.median(times))


# ----------------------------------------------------------------------------- (a) Keras on JAX


def keras_jax_rows(sizes, images, labels, vectors):
    import jax
    import keras

    from sdl_keras.losses import SDLLoss, max_positives_needed
    from sdl_keras.models import build_sdl_model
    from sdl_keras.models.tresnet import TResNet

    keras.config.set_dtype_policy("mixed_bfloat16")
    if sizes["tresnet"]:
        from sdl_keras.models import backbones

        layers, width = sizes["tresnet"]
        backbones.BACKBONES["tresnet_tiny"] = lambda size, weights: (
            TResNet(layers, width, include_top=False, input_shape=(size, size, 3), pooling="avg"),
            keras.layers.Rescaling(1.0 / 255.0))
    model = build_sdl_model("tresnet_tiny" if sizes["tresnet"] else "tresnet_m", num_rows=sizes["rows"],
                            embed_dim=sizes["dim"], image_size=sizes["image_size"])
    keras.config.set_dtype_policy("float32")
    loss = SDLLoss(vectors, reg_weight=0.3, max_positives=max_positives_needed(labels))
    model.compile(optimizer=keras.optimizers.AdamW(1e-4, weight_decay=3e-4), loss=loss, jit_compile=True)
    # The batch lives on the device: the step measures the step, not a host-to-device copy.
    x, y = jax.device_put(images), jax.device_put(labels)
    batch = sizes["batch"]
    train = timed(lambda: model.train_on_batch(x, y), FLAGS.warmup, FLAGS.steps)
    infer = timed(lambda: model.predict_on_batch(x), FLAGS.warmup, FLAGS.steps)
    return [
        ("(a) train step", "Keras 3 on JAX, bf16, XLA", batch / train, "img/s"),
        ("(a) inference", "Keras 3 on JAX, bf16, XLA", batch / infer, "img/s"),
    ]


# ----------------------------------------------------------------------------- (b), (c) PyTorch


def official_loss(A, labels, vectors, reg_weight=0.3):
    """The official ZS_SDL loss: a Python loop over the images of the batch (official normalization)."""
    import torch

    per_image = []
    for i in range(A.shape[0]):
        scores = (A[i] @ vectors.T).max(dim=0).values
        pos = labels[i] == 1
        s_pos, s_neg = scores[pos], scores[~pos]
        rank = torch.log1p(torch.exp(s_neg[None, :] - s_pos[:, None])).sum()
        weight = 1 + (vectors[pos].var(dim=0).sum() if pos.sum() > 1 else 0)
        reg = A[i].var(dim=0).sum()
        per_image.append(2 * ((1 - reg_weight) * weight * rank / pos.sum() + reg_weight * reg))
    return torch.stack(per_image).mean()


def vectorized_loss(A, labels, vectors, reg_weight=0.3):
    """The same loss as one batched PyTorch computation (positives gathered, as SDLLoss does)."""
    import torch

    scores = torch.einsum("bmd,cd->bmc", A, vectors).max(dim=1).values
    positives = labels == 1
    bound = int(positives.sum(1).max())
    slot_mask, slots = torch.topk(positives.float(), bound, dim=1)
    pos_scores = torch.gather(scores, 1, slots)
    margins = torch.nn.functional.softplus(scores[:, None, :] - pos_scores[:, :, None])
    rank = (margins * slot_mask[:, :, None] * (~positives).float()[:, None, :]).sum((1, 2))
    count = positives.sum(1).float()
    pos_vectors = vectors[slots] * slot_mask[:, :, None]
    mean = pos_vectors.sum(1) / count[:, None]
    variance = (((pos_vectors - mean[:, None]) * slot_mask[:, :, None]) ** 2).sum(1) / (count[:, None] - 1).clamp(min=1)
    weight = 1 + torch.where(count >= 2, variance.sum(-1), torch.zeros_like(count))
    reg = A.var(dim=1).sum(-1)
    return (2 * ((1 - reg_weight) * weight * rank / count + reg_weight * reg)).mean()


def torch_device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def torch_rows(sizes, images, labels, vectors):
    import torch

    try:
        import timm
    except ImportError:
        return [("(b) train step / inference", "PyTorch + timm", None, "timm is absent: not measured")]
    device = torch_device()
    if sizes["tresnet"]:
        layers, width = sizes["tresnet"]
        net = timm.models.tresnet.TResNet(layers=layers, width_factor=width, num_classes=0)
    else:
        net = timm.create_model("tresnet_m", pretrained=False, num_classes=0)
    net = net.to(device).to(memory_format=torch.channels_last)
    head = torch.nn.Linear(net.num_features, sizes["rows"] * sizes["dim"], bias=False).to(device)
    optimizer = torch.optim.AdamW(list(net.parameters()) + list(head.parameters()), lr=1e-4, weight_decay=3e-4)
    x = (torch.tensor(images, device=device).permute(0, 3, 1, 2) / 255.0).contiguous(memory_format=torch.channels_last)
    y, t = torch.tensor(labels, device=device), torch.tensor(vectors, device=device)
    batch, rows, dim = sizes["batch"], sizes["rows"], sizes["dim"]

    def matrices():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            flat = head(net(x))
        # The official head's flat output is viewed (d, M): A is its transpose.
        return flat.float().view(batch, dim, rows).transpose(1, 2)

    def train_step(loss_fn):
        def step():
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(matrices(), y, t)
            loss.backward()
            optimizer.step()
            return loss
        return step

    sync = (lambda value: torch.cuda.synchronize()) if device.type == "cuda" else (lambda value: value)
    net.train()
    official = timed(train_step(official_loss), FLAGS.warmup, FLAGS.steps, sync)
    vectorized = timed(train_step(vectorized_loss), FLAGS.warmup, FLAGS.steps, sync)
    net.eval()
    with torch.no_grad():
        infer = timed(matrices, FLAGS.warmup, FLAGS.steps, sync)
    name = f"PyTorch {torch.__version__} + timm {timm.__version__}, AMP bf16"
    return [
        ("(b) train step, official loss loop", name, batch / official, "img/s"),
        ("(b) train step, vectorized loss", name, batch / vectorized, "img/s"),
        ("(b) inference", name, batch / infer, "img/s"),
    ]


def loss_rows(sizes, labels, vectors):
    import jax
    import torch

    from sdl_keras.losses import SDLLoss, max_positives_needed

    rng = np.random.default_rng(1)
    A = (0.1 * rng.standard_normal((sizes["batch"], sizes["rows"], sizes["dim"]))).astype("float32")
    loss = SDLLoss(vectors, reg_weight=0.3, max_positives=max_positives_needed(labels))
    ours_step = jax.jit(jax.value_and_grad(lambda a: loss(labels, a)))
    a_device = jax.device_put(A)
    ours = timed(lambda: ours_step(a_device), FLAGS.warmup, FLAGS.steps, jax.block_until_ready)

    device = torch_device()
    a_torch = torch.tensor(A, device=device, requires_grad=True)
    y, t = torch.tensor(labels, device=device), torch.tensor(vectors, device=device)
    sync = (lambda value: torch.cuda.synchronize()) if device.type == "cuda" else (lambda value: value)
    official = timed(lambda: torch.autograd.grad(official_loss(a_torch, y, t), a_torch), 1,
                     max(2, FLAGS.steps // 4), sync)
    return [
        ("(c) SDLLoss fwd+bwd", "ours, jax.jit", 1000 * ours, "ms"),
        ("(c) SDLLoss fwd+bwd", f"official loop, PyTorch on {device.type}", 1000 * official, "ms"),
        ("(c) speed-up", "official loop / ours", official / ours, "x"),
    ]


def evaluation_rows(sizes):
    from sdl_keras.evaluation import evaluate_scores

    rng = np.random.default_rng(2)
    shape = (sizes["eval_images"], sizes["eval_tags"])
    labels = (rng.random(shape, dtype=np.float32) < 2.5 / shape[1]).astype(np.float32)
    scores = rng.standard_normal(shape, dtype=np.float32) + 1.5 * labels
    unseen = np.arange(shape[1] - sizes["eval_unseen"], shape[1])
    seconds = timed(lambda: evaluate_scores(scores, labels, unseen, ks=(3, 5)), 0, max(1, FLAGS.steps // 10))
    return [("(d) evaluate_scores", f"{shape[0]:,} x {shape[1]:,}, ZSL + GZSL, K=3,5", seconds, "s")]


def describe_devices():
    import jax
    import keras

    lines = [f"Python {platform.python_version()}, NumPy {np.__version__}, Keras {keras.__version__} "
             f"(backend {keras.backend.backend()}), JAX {jax.__version__}"]
    lines.append("JAX devices: " + ", ".join(f"{d.platform}:{getattr(d, 'device_kind', d)}" for d in jax.devices()))
    try:
        import torch

        name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
        lines.append(f"PyTorch {torch.__version__}: {name}")
    except ImportError:
        lines.append("PyTorch is absent")
    return lines


def main(argv):
    del argv
    sizes = SMOKE if FLAGS.smoke else FULL
    if FLAGS.smoke:
        FLAGS.steps, FLAGS.warmup = min(FLAGS.steps, 2), 1
    images, labels, vectors = synthetic(sizes)
    for line in describe_devices():
        print(line)
    print(f"Sizes: {'smoke (tiny TResNet)' if FLAGS.smoke else 'TResNet-M'} at {sizes['image_size']} px, batch "
          f"{sizes['batch']}, M={sizes['rows']}, d={sizes['dim']}, C={sizes['tags']}; {FLAGS.steps} timed steps\n")
    rows = keras_jax_rows(sizes, images, labels, vectors)
    rows += torch_rows(sizes, images, labels, vectors)
    rows += loss_rows(sizes, labels, vectors)
    rows += evaluation_rows(sizes)
    print(f"{'row':36s} | {'implementation':52s} | {'value':>10s} | unit")
    print("-" * 37 + "+" + "-" * 54 + "+" + "-" * 12 + "+" + "-" * 32)
    for row, implementation, value, unit in rows:
        shown = "-" if value is None else f"{value:10.2f}"
        print(f"{row:36s} | {implementation:52s} | {shown:>10s} | {unit}")


if __name__ == "__main__":
    app.run(main)
