"""The trainer's params and model presets, apart from the loop so that the model (lm_model) and the loop (trainer)
both import them without importing each other."""

from __future__ import annotations

from dataclasses import dataclass

# Model sizes. "tiny" trains in seconds on a CPU; "smollm2_135m" is SmolLM2-135M's shape (HF config of
# HuggingFaceTB/SmolLM2-135M: 30 layers, d=576, 9 heads / 3 kv heads, ffn 1536, rope theta 1e5, tied embeddings).
MODEL_PRESETS: dict[str, dict] = {
    # nano: the smallest size of a CI scaling sweep (16k non-embedding parameters, 1/8 of tiny)
    "nano": dict(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=2, intermediate_size=128),
    "tiny": dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=4, intermediate_size=256),
    "small": dict(hidden_size=256, num_layers=6, num_heads=4, num_kv_heads=4, intermediate_size=768),
    "smollm2_135m": dict(
        hidden_size=576, num_layers=30, num_heads=9, num_kv_heads=3, intermediate_size=1536, rope_theta=100_000.0
    ),
}

@dataclass(frozen=True, kw_only=True, slots=True)
class TrainParams:
    """Model shape, optimisation and checkpointing. Defaults = the tiny preset; see TrainParams.preset()."""

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 4  # < num_heads gives grouped-query attention (Ainslie et al. 2023)
    intermediate_size: int = 256
    rope_theta: float = 10_000.0  # RoFormer default (Su et al. 2021)
    tie_embeddings: bool = True  # as SmolLM2; the tied lm_head is most of a tiny model's parameters
    init_std: float = 0.02  # GPT-2 / Llama initializer_range
    # Extra output heads predicting t+2 .. t+1+mtp_heads (Gloeckle et al. 2024, arXiv:2404.19737, best at n=4 total).
    # Each head is one transformer layer on the trunk's output, sharing the unembedding; dropped at export. 0 = off.
    mtp_heads: int = 0
    micro_batch_size: int = 8  # rows of seq_len tokens per rank per micro-step
    grad_accum_steps: int = 1
    max_steps: int = 1000
    lr: float = 3e-3  # peak; tiny models tolerate high rates (SmolLM2-135M used 3e-3, Allal et al. 2025)
    schedule: str = "cosine"  # "cosine" (warmup + cosine) or "wsd" (warmup-stable-decay)
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # cosine floor at 10 % of peak, as Llama 2 (Touvron et al. 2023)
    wsd_decay_fraction: float = 0.2  # WSD cooldown on the last 20 % of steps (Hägele et al. 2024, arXiv:2405.18392)
    weight_decay: float = 0.1  # Llama 2
    beta1: float = 0.9
    beta2: float = 0.95  # Llama 2 / GPT-3
    eps: float = 1e-8
    grad_clip: float = 1.0  # Llama 2; 0 = no clipping
    precision: str = "auto"  # "auto": bf16 autocast on CUDA, fp32 on CPU; "fp32" forces fp32
    seed: int = 0  # model init and data order
    checkpoint_every: int = 100  # steps; a checkpoint is also written at max_steps
    keep_checkpoints: int = 2
    peak_flops: float | None = None  # per-device peak for MFU; None = look up the GPU name (H100/H200/A100)

    def __post_init__(self) -> None:
        if self.schedule not in ("cosine", "wsd"):
            raise ValueError(f"schedule must be 'cosine' or 'wsd', got {self.schedule!r}")
        if self.precision not in ("auto", "fp32"):
            raise ValueError(f"precision must be 'auto' or 'fp32', got {self.precision!r}")
        sizes = ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size", "max_steps",
                 "micro_batch_size", "grad_accum_steps", "checkpoint_every", "keep_checkpoints")
        small = [n for n in sizes if getattr(self, n) < 1]
        if small:  # before the modulo below: num_heads 0 would be a ZeroDivisionError, not a named key
            raise ValueError(f"{', '.join(small)} must be >= 1")
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError("hidden_size must divide by num_heads, and num_heads by num_kv_heads")
        if self.mtp_heads < 0 or self.warmup_steps < 0:
            raise ValueError("mtp_heads and warmup_steps must be >= 0")
        if not (self.lr > 0 and self.eps > 0 and self.rope_theta > 0 and self.init_std > 0):
            raise ValueError("lr, eps, rope_theta and init_std must be > 0")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("weight_decay and grad_clip must be >= 0 (grad_clip 0 = no clipping)")
        for name in ("min_lr_ratio", "wsd_decay_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.peak_flops is not None and self.peak_flops <= 0:
            raise ValueError(f"peak_flops must be > 0 (or absent to look it up), got {self.peak_flops}")

    @classmethod
    def preset(cls, name: str, **overrides) -> TrainParams:
        """Params with a named model size from MODEL_PRESETS, plus overrides."""
        if name not in MODEL_PRESETS:
            raise KeyError(f"unknown preset {name!r}; known: {sorted(MODEL_PRESETS)}")
        return cls(**{**MODEL_PRESETS[name], **overrides})
