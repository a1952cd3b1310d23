"""The model `tasks.train.trainer` trains: LlamaForCausalLM plus optional multi-token-prediction heads, and its FLOPs.

Apart from tasks/train/trainer.py so that importing the trainer (every Ray worker does, through the registry) does not
import torch: only building a model does (~300 MB and ~1.5 s per process).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from tasks.train.config import TrainParams


class CausalLMWithMTP(nn.Module):
    """LlamaForCausalLM plus optional multi-token heads; forward returns the summed token loss and its parts."""

    def __init__(self, params: TrainParams, vocab_size: int, seq_len: int, eos_id: int):
        super().__init__()
        from transformers import LlamaConfig, LlamaForCausalLM
        from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRMSNorm

        self.config = LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=params.hidden_size,
            intermediate_size=params.intermediate_size,
            num_hidden_layers=params.num_layers,
            num_attention_heads=params.num_heads,
            num_key_value_heads=params.num_kv_heads,
            max_position_embeddings=seq_len,
            rope_theta=params.rope_theta,
            tie_word_embeddings=params.tie_embeddings,
            initializer_range=params.init_std,
            bos_token_id=eos_id,
            eos_token_id=eos_id,
            pad_token_id=eos_id,
            attn_implementation="sdpa",  # the MTP heads rely on sdpa's implicit causal mask (attention_mask=None)
        )
        self.lm = LlamaForCausalLM(self.config)
        self.heads = nn.ModuleList(LlamaDecoderLayer(self.config, layer_idx=i) for i in range(params.mtp_heads))
        self.head_norms = nn.ModuleList(
            LlamaRMSNorm(params.hidden_size, eps=self.config.rms_norm_eps) for _ in range(params.mtp_heads)
        )
        for m in (*self.heads, *self.head_norms):
            m.apply(self.lm._init_weights)

    def forward(self, rows: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """rows: (B, L+1) token ids; valid: (B,) real tokens per row. Returns (total, next-token, mtp) summed CE."""
        inp = rows[:, :-1]
        length = inp.shape[1]
        pos = torch.arange(rows.shape[1], device=rows.device)
        real = pos[None, :] < valid[:, None]  # (B, L+1) which tokens are real (not padding)
        hidden = self.lm.model(input_ids=inp).last_hidden_state
        main = self._ce(self.lm.lm_head(hidden), rows[:, 1:], real[:, 1:])
        mtp = torch.zeros((), device=rows.device)
        if len(self.heads):
            position_ids = pos[None, :length]
            rope = self.lm.model.rotary_emb(hidden, position_ids=position_ids)
            for k, (head, norm) in enumerate(zip(self.heads, self.head_norms, strict=True), start=2):
                if k > length:
                    break
                h = norm(head(hidden, position_ids=position_ids, position_embeddings=rope))
                # head k at position i predicts token i+k: targets rows[:, k:], logits for positions < L+1-k
                mtp = mtp + self._ce(self.lm.lm_head(h[:, : length + 1 - k]), rows[:, k:], real[:, k:])
        return main + mtp, main.detach(), mtp.detach()

    @staticmethod
    def _ce(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        t = torch.where(mask, targets, torch.full_like(targets, -100))
        return F.cross_entropy(logits.float().flatten(0, 1), t.flatten(), ignore_index=-100, reduction="sum")


def flops_per_token(model: CausalLMWithMTP, seq_len: int) -> float:
    """Training FLOPs per token: 6N for the matmuls + 12·layers·d·T for attention (PaLM, Chowdhery et al. 2022, B)."""
    cfg = model.config
    n = sum(t.numel() for t in model.parameters())  # tied embedding counted once: it is the lm_head matmul
    n += len(model.heads) * cfg.vocab_size * cfg.hidden_size  # each MTP head reuses the unembedding matmul
    layers = cfg.num_hidden_layers + len(model.heads)
    return 6 * n + 12 * layers * cfg.hidden_size * seq_len
