"""Train the shipped vibration classifier and write edge_agent/models/.

    python tools/train_vibration.py --out edge_agent/models [--epochs N] [--samples N] [--seed N]

Needs TensorFlow (tools/requirements-train.txt), in its own venv; nothing else in edgeseal does.
Steps, all seeded so a rerun with the same TensorFlow writes the same files:

1. Generate ``--samples`` training windows (10 % of them for validation) with
   ``firmware_bridge.sim.profiles.vibration_windows`` — the generator behind ``firmware-bridge simulate``
   — at 400 Hz, 128 samples, 3 axes in g.
2. Train a small Conv1D network. Normalisation (per-axis mean / standard deviation of the training
   windows) is a fixed layer inside the model, so the agent feeds raw g.
3. Convert to a float32 TFLite file and a full-integer int8 one (int8 input and output tensors,
   calibrated on training windows). Both take ``(1, 128, 3)`` and give ``(1, 3)`` softmax scores in
   ``CONDITIONS`` order.
4. Evaluate both files with ai-edge-litert on ``--eval-samples`` windows from a different seed, the
   int8 input quantised with the tensor's own scale / zero point, exactly as the agent does; fail
   (exit 1, nothing written) below ``MIN_ACCURACY``.
5. Write ``vibration_f32.tflite``, ``vibration_int8.tflite`` and ``vibration.json`` (labels, shapes,
   quantisation, accuracy, confusion matrices, BLAKE3 of each file, seeds, generator version).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# TensorFlow reads these at import: quiet logs, no oneDNN reordering (bit-for-bit reruns), 2 threads.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np  # noqa: E402

from firmware_bridge.sim.profiles import CONDITIONS, GENERATOR_VERSION, VibrationProfile, vibration_windows  # noqa: E402

HZ = 400.0  # the simulator's default rate
WINDOW = 128  # 0.32 s: 6-16 shaft revolutions at 1200-3000 rpm
HOP = 64  # suggested pipeline hop: half-overlapping windows, a result every 0.16 s
MIN_ACCURACY = 0.95  # docs/model.md "Retraining": at least 95 % held out
MAX_FILE_BYTES = 100 * 1024  # docs/model.md "Retraining": each file under 100 KB
VALIDATION_FRACTION = 0.1
CALIBRATION_WINDOWS = 500  # representative dataset for int8 calibration
EVAL_SEED_OFFSET = 1_000_003  # held-out windows come from another seed than training
# The int8 input tensor has one scale for all three axes, ~2.2 g / 255 = 8.6 mg a step (uniform
# rounding noise 2.5 mg rms); the model is trained with that much Gaussian noise on its input.
INPUT_NOISE_G = 0.003


def _layers(x: Any) -> Any:
    """Everything after the first convolution: the same in the training and the shipped graph."""
    import keras

    x = keras.layers.MaxPooling1D(2)(x)
    x = keras.layers.Conv1D(24, 5, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.MaxPooling1D(2)(x)
    x = keras.layers.Conv1D(32, 3, padding="same", activation="relu", name="conv3")(x)
    # Global pooling: the window starts at an arbitrary phase, so the answer must not depend on where.
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.layers.Dense(len(CONDITIONS), activation="softmax", name="scores")(x)


def build_model(mean: np.ndarray, std: np.ndarray) -> Any:
    """The training graph: input noise, a fixed normalisation, then the classifier."""
    import keras

    inputs = keras.Input(shape=(WINDOW, len(VibrationProfile.channels)), name="accel_g")
    x = keras.layers.GaussianNoise(INPUT_NOISE_G)(inputs)
    x = keras.layers.Normalization(axis=-1, mean=mean, variance=std**2, name="normalise")(x)
    # "valid" padding: the normalisation can then be folded into this layer exactly (see shipped_model).
    x = keras.layers.Conv1D(16, 7, padding="valid", activation="relu", name="conv1")(x)
    return keras.Model(inputs, _layers(x), name="vibration")


def shipped_model(trained: Any, mean: np.ndarray, std: np.ndarray) -> Any:
    """The graph that ships: batch size 1, raw g in, the normalisation folded into the first convolution.

    conv(W, b)((x - m) / s) = conv(W / s, b - sum W m / s)(x). A separate Sub/Mul pair would be
    quantised as its own int8 tensor in the int8 file, at a step ~5x coarser than the input's.
    """
    import keras

    inputs = keras.Input(shape=(WINDOW, len(VibrationProfile.channels)), batch_size=1, name="accel_g")
    x = keras.layers.Conv1D(16, 7, padding="valid", activation="relu", name="conv1")(inputs)
    model = keras.Model(inputs, _layers(x), name="vibration")
    kernel, bias = trained.get_layer("conv1").get_weights()  # kernel: (taps, channels in, filters)
    folded = kernel / std[None, :, None]
    model.get_layer("conv1").set_weights([folded, bias - np.einsum("kcf,c->f", folded, mean)])
    for name in ("conv2", "conv3", "scores"):
        model.get_layer(name).set_weights(trained.get_layer(name).get_weights())
    return model


def convert(model: Any, calibration: np.ndarray | None) -> bytes:
    """TFLite bytes of ``model`` (batch size 1); full-integer int8 when ``calibration`` is given."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if calibration is not None:

        def representative() -> Any:
            for row in calibration:
                yield [row[None, ...].astype(np.float32)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    return bytes(converter.convert())


def _quant(detail: dict[str, Any]) -> dict[str, Any] | None:
    scale, zero_point = detail["quantization"]
    if not scale:
        return None
    return {"scale": float(scale), "zero_point": int(zero_point)}


def evaluate(content: bytes, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Accuracy, confusion matrix and tensor details of one .tflite file, run one window at a time."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=content)
    interp.allocate_tensors()
    (inp,) = interp.get_input_details()
    (out,) = interp.get_output_details()
    in_q, out_q = _quant(inp), _quant(out)
    confusion = np.zeros((len(CONDITIONS), len(CONDITIONS)), dtype=np.int64)
    for window, label in zip(x, y, strict=True):
        tensor = window[None, ...].astype(np.float32)
        if in_q is not None:
            info = np.iinfo(inp["dtype"])
            q = np.round(tensor / in_q["scale"]) + in_q["zero_point"]
            tensor = np.clip(q, info.min, info.max).astype(inp["dtype"])
        interp.set_tensor(inp["index"], tensor)
        interp.invoke()
        scores = interp.get_tensor(out["index"])[0]
        confusion[label, int(np.argmax(scores))] += 1
    return {
        "accuracy": float(np.trace(confusion) / max(1, confusion.sum())),
        "confusion": confusion.tolist(),
        "input": {
            "name": inp["name"],
            "shape": inp["shape"].tolist(),
            "dtype": np.dtype(inp["dtype"]).name,
            "quantization": in_q,
        },
        "output": {
            "name": out["name"],
            "shape": out["shape"].tolist(),
            "dtype": np.dtype(out["dtype"]).name,
            "quantization": out_q,
        },
    }


def print_confusion(title: str, result: dict[str, Any]) -> None:
    width = max(len(c) for c in CONDITIONS) + 2
    print(f"\n{title}: held-out accuracy {result['accuracy']:.4f} (rows true, columns predicted)")
    print(" " * width + "".join(c.rjust(width) for c in CONDITIONS))
    for name, row in zip(CONDITIONS, result["confusion"], strict=True):
        print(name.ljust(width) + "".join(str(v).rjust(width) for v in row))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "edge_agent" / "models", help="output folder")
    parser.add_argument("--epochs", type=int, default=30, help="training epochs (default 30)")
    parser.add_argument("--samples", type=int, default=24_000, help="training windows (default 24000)")
    parser.add_argument("--eval-samples", type=int, default=6_000, help="held-out windows (default 6000)")
    parser.add_argument("--seed", type=int, default=4, help="seed of data, weights and shuffling (default 4)")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.samples < 30 or args.eval_samples < 3:
        parser.error("need --epochs >= 1, --samples >= 30, --eval-samples >= 3")

    started = time.monotonic()
    x, y = vibration_windows(args.samples, window=WINDOW, hz=HZ, seed=args.seed)
    eval_seed = args.seed + EVAL_SEED_OFFSET
    x_eval, y_eval = vibration_windows(args.eval_samples, window=WINDOW, hz=HZ, seed=eval_seed)
    generated = time.monotonic()
    print(f"generated {len(x)} training + {len(x_eval)} held-out windows in {generated - started:.1f} s")

    import keras
    import tensorflow as tf

    tf.config.threading.set_inter_op_parallelism_threads(2)
    tf.config.threading.set_intra_op_parallelism_threads(2)
    keras.utils.set_random_seed(args.seed)
    tf.config.experimental.enable_op_determinism()

    n_val = max(3, int(len(x) * VALIDATION_FRACTION))
    x_train, y_train, x_val, y_val = x[n_val:], y[n_val:], x[:n_val], y[:n_val]
    # Per-axis offsets (gravity is on az) but one scale for all axes: az varies least, and dividing it
    # by its own small spread would magnify the int8 input rounding on that axis several times.
    flat = x_train.reshape(-1, x.shape[-1])
    mean = flat.mean(axis=0)
    std = np.full_like(mean, float(np.sqrt(((flat - mean) ** 2).mean())))
    model = build_model(mean, std)
    batch = 64
    steps = args.epochs * -(-len(x_train) // batch)
    schedule = keras.optimizers.schedules.CosineDecay(3e-3, decay_steps=steps, alpha=0.02)
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.summary(print_fn=print)
    model.fit(
        x_train,
        y_train,
        batch_size=batch,
        epochs=args.epochs,
        validation_data=(x_val, y_val),
        verbose=2,
        shuffle=True,
    )
    trained = time.monotonic()

    single = shipped_model(model, mean, std)
    files = {
        "f32": ("vibration_f32.tflite", convert(single, None)),
        "int8": ("vibration_int8.tflite", convert(single, x_train[:CALIBRATION_WINDOWS])),
    }
    import blake3

    report: dict[str, Any] = {}
    failed = False
    for key, (name, content) in files.items():
        result = evaluate(content, x_eval, y_eval)
        print_confusion(f"{name} ({len(content)} bytes)", result)
        if result["accuracy"] < MIN_ACCURACY:
            print(f"error: {name} accuracy {result['accuracy']:.4f} is below {MIN_ACCURACY}", file=sys.stderr)
            failed = True
        if len(content) >= MAX_FILE_BYTES:
            print(f"error: {name} is {len(content)} bytes, the limit is {MAX_FILE_BYTES}", file=sys.stderr)
            failed = True
        report[key] = {
            "file": name,
            "bytes": len(content),
            "blake3": blake3.blake3(content).hexdigest(),
            **result,
        }
    if failed:
        return 1

    meta = {
        "model": "vibration",
        "labels": list(CONDITIONS),
        "channels": list(VibrationProfile.channels),
        "units": "g",
        "hz": HZ,
        "window": WINDOW,
        "hop": HOP,
        "files": report,
        "params": int(model.count_params()),
        "training": {
            "seed": args.seed,
            "samples": args.samples,
            "validation_fraction": VALIDATION_FRACTION,
            "epochs": args.epochs,
            "normalisation": {"mean": [float(v) for v in mean], "std": [float(v) for v in std]},
            "tensorflow": tf.__version__,
            "generator": "firmware_bridge.sim.profiles.vibration_windows",
            "generator_version": GENERATOR_VERSION,
        },
        "evaluation": {"seed": eval_seed, "samples": args.eval_samples, "runtime": "ai-edge-litert"},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    for name, content in files.values():
        (args.out / name).write_bytes(content)
    (args.out / "vibration.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    done = time.monotonic()
    print(
        f"\nwrote {args.out}: generation {generated - started:.0f} s, training {trained - generated:.0f} s, "
        f"total {done - started:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
