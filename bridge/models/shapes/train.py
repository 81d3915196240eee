"""Train the shapes model on a GPU: ``stepx train-shapes``.

Two phases in one process, both on batches rendered on the GPU (``world.World``), bf16
autocast, captions assembled as token ids on the GPU, no host syncs in the step loop (losses
are accumulated on the device and read every ``--log-every`` steps):

1. the AutoencoderKL (8x down, 8 latent channels): L1 + MSE with object pixels weighted up,
   tiny KL; then ``scaling_factor`` = 1 / std of the latents;
2. the UNet and the CLIP text encoder, jointly, from scratch, on frozen-VAE latents:
   v-prediction, min-SNR-5 weighting, 10% empty captions for classifier-free guidance, EMA;
   optionally (``--ground W``) plus W × a token-grounding loss that asks each object word's
   cross-attention to fall on its object (``grounding.py``).

It stops by wall-clock (``--minutes``), writes a full checkpoint (``--ckpt-dir``, resumable
with ``--resume``) and the EMA weights as fp16 safetensors to ``--out`` (each file < 16 MiB);
``--export-from DIR --weights PATH`` turns those files into the diffusers folder that
``load_shapes_pipeline`` reads.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from typing import TYPE_CHECKING

import torch

from .grounding import grounding_loss, install, targets

if TYPE_CHECKING:
    from transformers import CLIPTextModel

log = logging.getLogger("bridge.shapes.train")




def run(args: argparse.Namespace) -> int:
    if args.export_from:
        from . import SHAPES_WEIGHTS

        export(Path(args.export_from), Path(args.weights) if args.weights else SHAPES_WEIGHTS)
        print(f"exported {args.export_from} -> {args.weights or SHAPES_WEIGHTS}")
        return 0
    return Trainer(args).train()


# ---------------------------------------------------------------------- helpers
def _ema_update(ema: list[torch.Tensor], params: list[torch.Tensor], decay: float) -> None:
    torch._foreach_lerp_(ema, params, 1.0 - decay)


def _save_fp16(module_sd: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().to(torch.float16).contiguous().cpu() for k, v in module_sd.items()}, str(path), metadata=metadata)


def _reconstruction_losses(rec: torch.Tensor, x: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted L1 and MSE of a VAE reconstruction; object pixels count 5x (objects are small)."""
    w = 1.0 + 4.0 * masks.any(1, keepdim=True).float()  # [B, 1, H, W]
    err = rec - x
    return (err.abs() * w).mean(), (err.square() * w).mean()


def _load_any(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(path.parent.glob(path.name))
    sd: dict[str, torch.Tensor] = {}
    for f in files:
        sd.update(load_file(str(f)))
    if not sd:
        raise FileNotFoundError(f"no weights match {path}")
    return sd


def load_exported(folder: Path, vae: torch.nn.Module, unet: torch.nn.Module, text: torch.nn.Module) -> float:
    """Load weights written by ``Trainer._export_files`` or a diffusers folder; return scaling_factor."""
    if (folder / "model_index.json").is_file():  # a diffusers pipeline folder
        vae.load_state_dict({k: v.float() for k, v in _load_any(folder / "vae" / "diffusion_pytorch_model*.safetensors").items()})
        unet.load_state_dict({k: v.float() for k, v in _load_any(folder / "unet" / "diffusion_pytorch_model*.safetensors").items()})
        text.load_state_dict({k: v.float() for k, v in _load_any(folder / "text_encoder" / "model*.safetensors").items()}, strict=False)
        return float(json.loads((folder / "vae" / "config.json").read_text())["scaling_factor"])
    meta = json.loads((folder / "meta.json").read_text())
    vae_file = folder / "vae.safetensors"
    if not vae_file.is_file() and meta.get("vae_from"):  # trained on a reused VAE: it may travel without it
        vae_file = Path(meta["vae_from"]) / "vae" / "diffusion_pytorch_model*.safetensors"
    vae.load_state_dict({k: v.float() for k, v in _load_any(vae_file).items()})
    unet.load_state_dict({k: v.float() for k, v in _load_any(folder / "unet_*.safetensors").items()})
    text.load_state_dict({k: v.float() for k, v in _load_any(folder / "text_encoder.safetensors").items()}, strict=False)
    return float(meta["scaling_factor"])


def export(src: Path, dst: Path) -> None:
    """Assemble the diffusers folder ``dst`` from exported files in ``src``."""
    import tempfile

    from .model import build_pipeline, save_pipeline

    meta = json.loads((src / "meta.json").read_text()) if (src / "meta.json").is_file() else {}
    pipe = build_pipeline(Path(tempfile.mkdtemp()) / "tok", text_window=meta.get("text_window"))
    sf = load_exported(src, pipe.vae, pipe.unet, pipe.text_encoder)
    pipe.vae.register_to_config(scaling_factor=sf)
    save_pipeline(pipe, dst)
    if (src / "meta.json").is_file():  # provenance: steps, seed, batch, training seconds
        (dst / "training.json").write_text((src / "meta.json").read_text())


# ---------------------------------------------------------------------- trainer
class Trainer:
    def __init__(self, args: argparse.Namespace):
        from diffusers import AutoencoderKL, UNet2DConditionModel

        from .model import UNET_CONFIG, VAE_CONFIG, build_text_encoder, train_scheduler
        from .world import World

        self.args = args
        self.t0 = time.monotonic()
        self.deadline = self.t0 + args.minutes * 60
        self.dev = torch.device(args.device)
        torch.manual_seed(args.seed)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.ckpt_dir = Path(args.ckpt_dir)
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        self.logf = open(self.out / "train_log.txt", "a")
        self.world = World(128, self.dev, seed=args.seed)
        self.text_window = args.text_window if args.text_encoder == "local" else None
        self.vae = AutoencoderKL(**VAE_CONFIG).to(self.dev)
        self.unet = UNet2DConditionModel(**UNET_CONFIG).to(self.dev)
        # transformers wraps PreTrainedModel.to in functools.wraps, whose typeshed type (_Wrapped) has no
        # __get__: mypy does not bind self, so it reads the device as the model argument
        self.text: CLIPTextModel = build_text_encoder(self.text_window).to(self.dev)  # type: ignore[arg-type]
        if args.freeze_text:  # keys a fixed function of the words, as with SD's frozen, pre-trained CLIP
            self.text.requires_grad_(False)
        self.sched = train_scheduler()
        self.alphas = self.sched.alphas_cumprod.to(self.dev)
        self.scaling = 1.0
        self.vae_step = 0
        self.vae_done = False
        self.step = 0
        self.vae_opt = torch.optim.AdamW(self.vae.parameters(), lr=args.vae_lr, betas=(0.9, 0.99), weight_decay=0.0)
        self.params = [p for p in list(self.unet.parameters()) + list(self.text.parameters()) if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=args.lr, betas=(0.9, 0.99), weight_decay=0.01)
        self.ema = [p.detach().clone() for p in self.params]
        self.elapsed_before = 0.0
        empty = self.world.ids
        self.empty_ids = torch.full((1, 32), empty["<pad>"], dtype=torch.long, device=self.dev)
        self.empty_ids[0, 0] = empty["<bos>"]
        if args.resume:
            self._resume(Path(args.resume))
        elif args.vae_from:
            self._vae_from(Path(args.vae_from))

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.dev.type, dtype=torch.bfloat16)

    def _sync(self) -> None:
        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)

    # -------------------------------------------------------------- io
    def say(self, msg: str) -> None:
        line = f"[{time.monotonic() - self.t0:7.1f}s] {msg}"
        print(line, flush=True)
        self.logf.write(line + "\n")
        self.logf.flush()

    def _resume(self, path: Path) -> None:
        if path.is_file():
            ck = torch.load(path, map_location=self.dev, weights_only=False)
            self.vae.load_state_dict(ck["vae"])
            self.unet.load_state_dict(ck["unet"])
            self.text.load_state_dict(ck["text"])
            self.vae_opt.load_state_dict(ck["vae_opt"])
            self.opt.load_state_dict(ck["opt"])
            for e, s in zip(self.ema, ck["ema"]):
                e.copy_(s)
            self.scaling, self.vae_step, self.vae_done, self.step = ck["scaling"], ck["vae_step"], ck["vae_done"], ck["step"]
            self.elapsed_before = ck.get("elapsed", 0.0)
            self.ground_from_step = ck.get("ground_from_step")
            self.vae_from = ck.get("vae_from")
            self._check_text_window(ck.get("text_window"), path)
            self.say(f"resumed full checkpoint {path}: vae_step={self.vae_step} step={self.step}")
        else:  # exported (EMA) weights: no optimizer state, restart the LR warm-up
            self.scaling = load_exported(path, self.vae, self.unet, self.text)
            for e, p in zip(self.ema, self.params):
                e.copy_(p.detach())
            self.vae_done = True
            meta = path / "meta.json" if (path / "meta.json").is_file() else path / "training.json"
            if meta.is_file():
                m = json.loads(meta.read_text())
                self.step, self.vae_step = m.get("step", 0), m.get("vae_step", 0)
                self.elapsed_before = m.get("elapsed", 0.0)
                self.ground_from_step = m.get("ground_from_step")
                self.vae_from = m.get("vae_from")
                self._check_text_window(m.get("text_window"), path)
                self.decoder_steps = m.get("decoder_steps", 0)
            self.resumed_from_weights = True
            self.say(f"resumed exported weights {path} (no optimizer state): step={self.step}")

    def _check_text_window(self, saved: int | None, path: Path) -> None:
        if saved != self.text_window:
            kind = lambda w: f"--text-encoder local --text-window {w}" if w is not None else "--text-encoder clip"  # noqa: E731
            raise ValueError(f"{path} was trained with {kind(saved)}; resume it with the same, not {kind(self.text_window)}")

    def _vae_from(self, folder: Path) -> None:
        """Reuse a trained VAE (e.g. the shipped one) frozen: the UNet and text encoder start from scratch."""
        from diffusers import AutoencoderKL

        src = AutoencoderKL.from_pretrained(str(folder / "vae") if (folder / "vae").is_dir() else str(folder))
        self.vae.load_state_dict({k: v.float() for k, v in src.state_dict().items()})
        self.scaling = float(src.config.scaling_factor)
        self.vae_done = True
        self.vae_from = str(folder)
        self.say(f"VAE from {folder} (frozen, scaling_factor {self.scaling:.4f}); UNet and text encoder from scratch")

    def _checkpoint(self) -> None:
        ck = {
            "vae": self.vae.state_dict(), "unet": self.unet.state_dict(), "text": self.text.state_dict(),
            "vae_opt": self.vae_opt.state_dict(), "opt": self.opt.state_dict(), "ema": self.ema,
            "scaling": self.scaling, "vae_step": self.vae_step, "vae_done": self.vae_done, "step": self.step,
            "elapsed": self.elapsed(), "ground_from_step": getattr(self, "ground_from_step", None),
            "vae_from": getattr(self, "vae_from", None), "text_window": self.text_window,
        }
        tmp = self.ckpt_dir / "ckpt.pt.tmp"
        torch.save(ck, tmp)
        tmp.replace(self.ckpt_dir / "ckpt.pt")

    def _param_names(self) -> list[str]:
        """State-dict names of ``self.params`` in order (the EMA list follows it)."""
        return [n for m in (self.unet, self.text) for n, p in m.named_parameters() if p.requires_grad]

    def elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self.t0

    def _export_files(self) -> None:
        """EMA weights, fp16, each file < 16 MiB: vae, text_encoder, unet_0/unet_1, meta.json."""
        unet_sd = self.unet.state_dict()
        text_sd = self.text.state_dict()
        ema = dict(zip(self._param_names(), self.ema))
        unet_sd = {k: ema.get(k, v) for k, v in unet_sd.items()}
        text_sd = {k: ema.get(k, v) for k, v in text_sd.items()}
        keys = list(unet_sd)
        half = len(keys) // 2
        _save_fp16({k: unet_sd[k] for k in keys[:half]}, self.out / "unet_0.safetensors")
        _save_fp16({k: unet_sd[k] for k in keys[half:]}, self.out / "unet_1.safetensors")
        _save_fp16(text_sd, self.out / "text_encoder.safetensors")
        _save_fp16(self.vae.state_dict(), self.out / "vae.safetensors")
        meta = {"scaling_factor": self.scaling, "step": self.step, "vae_step": self.vae_step, "elapsed": self.elapsed(), "seed": self.args.seed,
                "batch": self.args.batch, "ground": self.args.ground, "ground_from_step": getattr(self, "ground_from_step", None),
                "decoder_steps": getattr(self, "decoder_steps", 0), "text_window": self.text_window,
                "rewrite_captions": self.args.rewrite_captions, "freeze_text": self.args.freeze_text,
                "vae_from": getattr(self, "vae_from", None)}
        (self.out / "meta.json").write_text(json.dumps(meta, indent=1))

    # -------------------------------------------------------------- phases
    def measure(self) -> None:
        b = self.args.batch
        for _ in range(3):
            sc = self.world.sample(b); self.world.render(sc); self.world.caption_ids(sc)
        self._sync()
        t = time.monotonic()
        for _ in range(20):
            sc = self.world.sample(b)
            img, _ = self.world.render(sc)
            self.world.caption_ids(sc)
        self._sync()
        dt = (time.monotonic() - t) / 20
        self.say(f"data: batch {b} rendered+captioned in {dt*1000:.1f} ms ({b/dt:.0f} images/s)")

    def train_vae(self) -> None:
        a, vae = self.args, self.vae
        end = min(self.deadline, time.monotonic() + a.vae_seconds)
        acc = torch.zeros(3, device=self.dev)
        t_last, s_last = time.monotonic(), self.vae_step
        vae.train()
        while time.monotonic() < end:
            sc = self.world.sample(a.vae_batch)
            img, masks = self.world.render(sc)
            x = img * 2 - 1
            with self._autocast():
                post = vae.encode(x).latent_dist
                z = post.sample()
                rec = vae.decode(z).sample
            rec = rec.float()
            l1, mse = _reconstruction_losses(rec, x, masks)
            kl = post.kl().mean() / z[0].numel()
            loss = l1 + mse + 1e-4 * kl
            self.vae_opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
            self.vae_opt.step()
            acc += torch.stack([l1.detach(), mse.detach(), kl.detach()])
            self.vae_step += 1
            if self.vae_step % a.log_every == 0:
                v = (acc / a.log_every).tolist()
                now = time.monotonic()
                self.say(f"vae step {self.vae_step}: l1 {v[0]:.4f} mse {v[1]:.4f} kl {v[2]:.3f} | {(self.vae_step - s_last)/(now - t_last):.1f} steps/s")
                acc.zero_()
                t_last, s_last = now, self.vae_step
        vae.eval()
        with torch.no_grad(), self._autocast():
            zs = torch.cat([vae.encode(self.world.render(self.world.sample(256))[0] * 2 - 1).latent_dist.mean.float() for _ in range(4)])
        self.scaling = float(1.0 / zs.std())
        self.vae_done = True
        self.say(f"vae done after {self.vae_step} steps; latent std {zs.std():.4f} mean {zs.mean():.4f} -> scaling_factor {self.scaling:.4f}")
        self._checkpoint()

    def train_decoder(self) -> None:
        """Fine-tune the VAE's decoder on the encoder's posterior means (what the UNet learns to
        produce), with the VAE phase's loss; the encoder and so the latent space stay fixed."""
        a, vae = self.args, self.vae
        end = min(self.deadline, time.monotonic() + a.decoder_seconds)
        params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
        opt = torch.optim.AdamW(params, lr=a.vae_lr * 0.5, betas=(0.9, 0.99), weight_decay=0.0)
        vae.eval().requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        vae.decoder.train()
        acc = torch.zeros(2, device=self.dev)
        step = 0
        while time.monotonic() < end and (a.decoder_steps is None or step < a.decoder_steps):
            sc = self.world.sample(a.vae_batch)
            img, masks = self.world.render(sc)
            x = img * 2 - 1
            with torch.no_grad(), self._autocast():
                z = vae.encode(x).latent_dist.mean
            with self._autocast():
                rec = vae.decode(z).sample.float()
            l1, mse = _reconstruction_losses(rec, x, masks)
            opt.zero_grad(set_to_none=True)
            (l1 + mse).backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            acc += torch.stack([l1.detach(), mse.detach()])
            step += 1
            if step % a.log_every == 0:
                v = (acc / a.log_every).tolist()
                self.say(f"decoder step {step}: l1 {v[0]:.4f} mse {v[1]:.4f}")
                acc.zero_()
        vae.eval().requires_grad_(False)
        self.decoder_steps = getattr(self, "decoder_steps", 0) + step
        self.say(f"decoder fine-tuned for {step} steps")

    def train_unet(self) -> None:
        a = self.args
        self.vae.eval().requires_grad_(False)
        self.unet.train()
        self.text.train()
        acc = torch.zeros(2, device=self.dev)
        store = install(self.unet) if a.ground > 0 else None
        if store is not None and getattr(self, "ground_from_step", None) is None:
            self.ground_from_step = self.step  # provenance: the step grounding started at
        t_last, s_last = time.monotonic(), self.step
        last_ck = time.monotonic()
        start_step = self.step
        warm_from = self.step if getattr(self, "resumed_from_weights", False) else 0
        margin = min(25.0, 0.25 * a.minutes * 60)  # seconds kept for the final checkpoint, export and samples
        while time.monotonic() < self.deadline - margin and (a.unet_steps is None or self.step - start_step < a.unet_steps):
            b = a.batch
            sc = self.world.sample(b)
            img, masks = self.world.render(sc)
            ids, positions = self.world.caption_tokens(sc, rewrite=a.rewrite_captions)
            drop = torch.rand(b, 1, device=self.dev) < a.cond_drop
            ids = torch.where(drop, self.empty_ids, ids)
            with torch.no_grad(), self._autocast():
                z0 = self.vae.encode(img * 2 - 1).latent_dist.mean.float() * self.scaling
            t = torch.randint(0, 1000, (b,), device=self.dev)
            ab = self.alphas[t].view(b, 1, 1, 1)
            noise = torch.randn_like(z0)
            zt = ab.sqrt() * z0 + (1 - ab).sqrt() * noise
            target = ab.sqrt() * noise - (1 - ab).sqrt() * z0  # v
            snr = ab / (1 - ab)
            wgt = (snr.clamp_max(5.0) / (snr + 1)).view(b)
            if store is not None:
                store.clear()
            with self._autocast():
                enc = self.text(ids).last_hidden_state
                pred = self.unet(zt, t, enc).sample
            loss = ((pred.float() - target) ** 2).mean((1, 2, 3))
            loss = (loss * wgt).mean()
            ground = torch.zeros((), device=self.dev)
            if store is not None:
                pos, regions, valid = targets(masks, positions)
                ground = grounding_loss(store, pos, regions, valid & ~drop)
                store.clear()
            total = loss + a.ground * ground
            lr = a.lr * min(1.0, (self.step - warm_from + 1) / a.warmup)
            for g in self.opt.param_groups:
                g["lr"] = lr
            self.opt.zero_grad(set_to_none=True)
            total.backward()
            torch.nn.utils.clip_grad_norm_(self.params, 1.0)
            self.opt.step()
            self.step += 1
            _ema_update(self.ema, [p.detach() for p in self.params], min(a.ema, (1 + self.step) / (10 + self.step)))
            acc += torch.stack([loss.detach(), ground.detach()])
            if self.step % a.log_every == 0:
                now = time.monotonic()
                lv = (acc / a.log_every).tolist()
                self.say(f"unet step {self.step}: loss {lv[0]:.4f} ground {lv[1]:.4f} lr {lr:.2e} | "
                         f"{(self.step - s_last)/(now - t_last):.2f} steps/s, {(self.step - s_last) * b/(now - t_last):.0f} images/s")
                acc.zero_()
                t_last, s_last = now, self.step
                if now - last_ck > a.ckpt_every:
                    self._checkpoint()
                    last_ck = time.monotonic()
        if store is not None:
            from diffusers.models.attention_processor import AttnProcessor2_0

            self.unet.set_attn_processor(AttnProcessor2_0())
        self.say(f"unet stopped at step {self.step} ({self.step - start_step} this run)")

    @torch.no_grad()
    def samples(self) -> None:
        """A grid of EMA samples for a look (written to --out/samples.png)."""
        import tempfile

        from PIL import Image

        from .model import build_pipeline

        pipe = build_pipeline(Path(tempfile.mkdtemp()) / "tok", text_window=self.text_window)
        pipe.vae.load_state_dict(self.vae.state_dict())
        ema = dict(zip(self._param_names(), self.ema))
        pipe.unet.load_state_dict({k: ema.get(k, v) for k, v in self.unet.state_dict().items()})
        pipe.text_encoder.load_state_dict({k: ema.get(k, v) for k, v in self.text.state_dict().items()})
        pipe.vae.register_to_config(scaling_factor=self.scaling)
        pipe = pipe.to(self.dev)
        pipe.set_progress_bar_config(disable=True)
        prompts = [
            "a red circle", "a blue square above a yellow star", "a small green triangle left of a large white heart on a black background",
            "a red star", "a blue triangle below a orange circle", "a green circle right of a purple square on a yellow background",
            "a large purple heart", "a black star left of a white cross above a red square",
        ]
        g = torch.Generator(self.dev).manual_seed(0)
        ims = pipe(prompts, num_inference_steps=20, guidance_scale=4.0, generator=g).images
        sc = self.world.sample(8)
        real, _ = self.world.render(sc)
        with self._autocast():
            rec = self.vae.decode(self.vae.encode(real * 2 - 1).latent_dist.mean).sample.float()
        to_pil = lambda t: Image.fromarray((t.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).astype("uint8"))  # noqa: E731
        grid = Image.new("RGB", (128 * 8, 128 * 3))
        for i in range(8):
            grid.paste(ims[i], (128 * i, 0))
            grid.paste(to_pil(real[i]), (128 * i, 128))
            grid.paste(to_pil((rec[i] + 1) / 2), (128 * i, 256))
        grid.save(self.out / "samples.png")
        self.say("samples: row 1 generated (" + " | ".join(prompts) + "), row 2 real, row 3 VAE reconstruction")

    def train(self) -> int:
        a = self.args
        self.say(f"device {torch.cuda.get_device_name(self.dev) if self.dev.type == 'cuda' else self.dev}; torch {torch.__version__}; "
                 f"unet {sum(p.numel() for p in self.unet.parameters())/1e6:.2f}M text {sum(p.numel() for p in self.text.parameters())/1e6:.2f}M "
                 f"vae {sum(p.numel() for p in self.vae.parameters())/1e6:.2f}M; args {vars(a)}")
        if a.measure:
            self.measure()
        if not self.vae_done:
            self.train_vae()
        if a.decoder_seconds > 0:
            self.train_decoder()
        if not a.skip_unet:
            self.train_unet()
        self._checkpoint()
        self._export_files()
        self.say(f"exported EMA weights to {self.out}; total training time {self.elapsed():.0f}s")
        if a.skip_samples:
            return 0
        try:
            self.samples()
        except Exception as e:  # samples are a convenience; never lose the weights over them
            self.say(f"samples failed: {e!r}")
        return 0
