"""``stepx train-shapes``: train the embedded shapes model (GPU).

The options live here and the work in :mod:`bridge.models.shapes.train`, imported only when the
command runs: that module needs torch, and ``--help`` must answer without it.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="shapes_out", help="folder for the EMA weights (fp16 safetensors), log and samples")
    p.add_argument("--ckpt-dir", default="/tmp/shapes_ckpt", help="folder for the full resumable checkpoint")
    p.add_argument("--resume", default=None, help="a ckpt.pt, or a folder of exported weights (vae/unet/text_encoder)")
    p.add_argument("--minutes", type=float, default=8.0, help="wall-clock budget for everything, minutes")
    p.add_argument("--vae-seconds", type=float, default=100.0, help="time for the VAE phase (skipped if resumed past it)")
    p.add_argument("--decoder-seconds", type=float, default=0.0,
                   help="first fine-tune the VAE decoder alone for this long (encoder frozen, so the latent space the UNet "
                        "learnt stays the same)")
    p.add_argument("--decoder-steps", type=int, default=None, metavar="N",
                   help="with --decoder-seconds: stop the decoder after N steps if its time has not run out first")
    p.add_argument("--unet-steps", type=int, default=None, metavar="N",
                   help="stop the UNet after N steps of this run if the wall-clock budget has not run out first")
    p.add_argument("--skip-unet", action="store_true", help="no UNet training (e.g. only --decoder-seconds)")
    p.add_argument("--batch", type=int, default=256, help="UNet batch size")
    p.add_argument("--vae-batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--vae-lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--cond-drop", type=float, default=0.1)
    p.add_argument("--ground", type=float, default=0.0,
                   help="weight of the token-grounding loss on cross-attention (grounding.py); 0 = off")
    p.add_argument("--rewrite-captions", action="store_true",
                   help="describe half the training scenes the other way round (relations inverted, objects reversed), "
                        "so caption position predicts nothing about layout")
    p.add_argument("--text-encoder", choices=("clip", "local"), default="clip",
                   help="clip: causal CLIP over learned positions (the shipped model); local: each token sees only "
                        "its neighbours (band attention of --text-window, no absolute positions)")
    p.add_argument("--text-window", type=int, default=1, help="with --text-encoder local: attention half-width in tokens, per layer")
    p.add_argument("--freeze-text", action="store_true",
                   help="keep the text encoder at its random initialisation (its keys a fixed function of the words)")
    p.add_argument("--vae-from", default=None,
                   help="reuse this diffusers folder's VAE, frozen (e.g. the shipped weights); skips the VAE phase")
    p.add_argument("--skip-samples", action="store_true", help="no samples.png at the end")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda")
    p.add_argument("--log-every", type=int, default=200)
    p.add_argument("--ckpt-every", type=float, default=120.0, help="seconds between checkpoints")
    p.add_argument("--measure", action="store_true", help="first time the data pipeline alone")
    p.add_argument("--export-from", default=None, help="no training: assemble a diffusers folder from --out style files")
    p.add_argument("--weights", default=None, help="with --export-from: destination folder (default: the package's)")


def run(args: argparse.Namespace) -> int:
    from bridge.models.shapes.train import run as run_train

    return run_train(args)
