"""The prompted sequence policy: one class, three prompt modes.

- ``prompt="encoder"``: CMT. The prompt is ``E(context)`` (or a tuned tensor of the same shape).
- ``prompt="segment"``: Prompt-DT. The prompt is a raw trajectory segment, embedded as tokens.
- ``prompt="none"``: multi-task Decision Transformer (no prompt).

``condition_on_rtg`` adds the return-to-go token of the Decision Transformer. The prompt is
placed in front of the history tokens, so with a causal mask every history token sees every
prompt token while history stays causal (see :mod:`cmt.data.sampler` on right padding).

``attention="banded"`` narrows history attention to a band of K steps (the prompt stays
visible), a function of the whole episode that :meth:`SequencePolicy.decode_step` computes
incrementally with a rolling key/value cache (docs/method.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cmt.data.dataset import OfflineDataset
from cmt.data.sampler import Batch, feature_dim
from cmt.models.encoder import ContextEncoder
from cmt.models.gpt import GPT, KVCache, init_weights
from cmt.models.heads import ActionHead, make_action_head
from cmt.models.ops import Dropout
from cmt.sections import ModelConfig


@dataclass
class Outputs:
    actions: torch.Tensor  # (B, K, act): in [-1, 1], or logits of discrete actions
    next_states: torch.Tensor | None  # (B, K, obs) normalised, from action tokens
    rewards: torch.Tensor | None  # (B, K) scaled, from action tokens


@dataclass
class DecodeState:
    """A banded model's incremental decoding state for one batch of episodes."""

    cache: KVCache  # keys and values: the prompt's P slots, then a ring of history slots
    prompt_len: int  # P: cached prompt tokens, never overwritten
    pos: torch.Tensor  # (ring,) stream position (step * tokens_per_step + token) of each
    # history slot's token, -1 while empty
    t: int = 0  # the step the next decode_step predicts an action for


class SequencePolicy(nn.Module):
    """``act_dim`` is the width of a continuous action or the number of discrete actions
    (``discrete``; actions then travel one-hot). With ``num_agents`` > 1 the agents of a team
    share these parameters: each agent's trajectory is one sequence of the batch, told apart
    by an agent-id embedding (MADT; docs/method.md)."""

    def __init__(
        self,
        cfg: ModelConfig,
        obs_dim: int,
        act_dim: int,
        discrete: bool = False,
        num_agents: int = 1,
    ) -> None:
        super().__init__()
        self.cfg, self.obs_dim, self.act_dim = cfg, obs_dim, act_dim
        self.discrete, self.num_agents = discrete, num_agents
        d = cfg.d_model
        self.tokens_per_step = 3 if cfg.condition_on_rtg else 2
        self.embed_state = nn.Linear(obs_dim, d)
        self.embed_action = nn.Linear(act_dim, d)
        self.embed_rtg = nn.Linear(1, d) if cfg.condition_on_rtg else None
        self.embed_timestep = nn.Embedding(cfg.max_timestep, d)
        # Token types: 0 prompt, 1 return-to-go, 2 state, 3 action.
        self.embed_type = nn.Embedding(4, d)
        self.embed_agent = nn.Embedding(num_agents, d) if num_agents > 1 else None
        self.drop = Dropout(cfg.dropout)
        self.encoder = (
            ContextEncoder(
                feature_dim(obs_dim, act_dim),
                d,
                cfg.prompt_len,
                cfg.encoder_layers,
                cfg.n_head,
                cfg.dropout,
            )
            if cfg.prompt == "encoder"
            else None
        )
        self.backbone = GPT(cfg.n_layer, d, cfg.n_head, cfg.dropout)
        self.action_head: ActionHead = make_action_head(d, act_dim, discrete)
        self.next_state_head = nn.Linear(d, obs_dim) if cfg.dynamics_heads else None
        self.reward_head = nn.Linear(d, 1) if cfg.dynamics_heads else None
        init_weights(self, cfg.n_layer)

    @classmethod
    def for_dataset(cls, cfg: ModelConfig, ds: OfflineDataset) -> SequencePolicy:
        """A policy shaped for ``ds``'s observations, actions and agents."""
        d = ds.data
        return cls(cfg, d.obs_dim, d.act_dim, d.avail_actions is not None, ds.num_agents)

    # ----------------------------------------------------------------- tokens
    def embed_steps(
        self,
        states: torch.Tensor,
        actions: torch.Tensor,
        rtg: torch.Tensor | None,
        timesteps: torch.Tensor,
        agents: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Interleave per-step tokens [rtg], s, a: -> (B, T * tokens_per_step, d).

        ``agents`` (B,) is each sequence's agent id (teams only)."""
        B, T, _ = states.shape
        time = self.embed_timestep(timesteps.clamp(max=self.cfg.max_timestep - 1))  # (B, T, d)
        if self.embed_agent is not None:
            if agents is None:
                raise ValueError(f"a model of {self.num_agents} agents needs agent ids")
            time = time + self.embed_agent(agents).unsqueeze(1)  # (B, T, d)
        types = self.embed_type.weight
        tokens = [self.embed_state(states) + types[2], self.embed_action(actions) + types[3]]
        if self.embed_rtg is not None:
            assert rtg is not None  # a return-conditioned model is always given one
            tokens.insert(0, self.embed_rtg(rtg.unsqueeze(-1)) + types[1])
        x = torch.stack(tokens, dim=2) + time.unsqueeze(2)  # (B, T, n_tok, d)
        return x.reshape(B, T * self.tokens_per_step, -1)  # (B, T * n_tok, d)

    def prompt_from_context(self, context: torch.Tensor) -> torch.Tensor:
        """CMT prompt ``E(context)``: (B, C, F) -> (B, m, d)."""
        if self.encoder is None:
            raise ValueError(f"model has prompt={self.cfg.prompt!r}, not an encoder")
        return self.encoder(context)

    def prompt_from_segment(self, segment: dict[str, torch.Tensor]) -> torch.Tensor:
        """Prompt-DT prompt: raw segment (B, S, ...) -> (B, S * n_tok, d)."""
        return self.embed_steps(
            segment["states"], segment["actions"], segment["rtg"], segment["timesteps"]
        )

    def batch_prompt(self, batch: Batch) -> torch.Tensor | None:
        """The prompt a training batch implies under this model's prompt mode."""
        if self.cfg.prompt == "encoder":
            assert batch.context is not None  # the sampler draws contexts for encoder models
            return self.prompt_from_context(batch.context)
        if self.cfg.prompt == "segment":
            assert batch.segment is not None
            return self.prompt_from_segment(batch.segment)
        return None

    # ---------------------------------------------------------------- forward
    def forward(
        self,
        states: torch.Tensor,
        actions: torch.Tensor,
        rtg: torch.Tensor | None,
        timesteps: torch.Tensor,
        prompt: torch.Tensor | None,
        agents: torch.Tensor | None = None,
    ) -> Outputs:
        """History (B, K, ...) plus an optional prompt (B, P, d) -> per-step predictions."""
        B, K, _ = states.shape
        x = self.embed_steps(states, actions, rtg, timesteps, agents)  # (B, K * n_tok, d)
        P = 0
        if prompt is not None:
            P = prompt.shape[1]
            x = torch.cat([prompt + self.embed_type.weight[0], x], dim=1)  # (B, P + K*n_tok, d)
        mask = None
        if self.cfg.attention == "banded":
            mask = self.full_mask(P, K * self.tokens_per_step, x.device)  # (P + K*n, P + K*n)
        h = self.backbone(self.drop(x), mask)[:, P:]  # (B, K * n_tok, d)
        h = h.reshape(B, K, self.tokens_per_step, -1)  # (B, K, n_tok, d)
        h_state, h_action = h[:, :, -2], h[:, :, -1]  # (B, K, d) each
        return Outputs(
            actions=self.action_head(h_state),
            next_states=None if self.next_state_head is None else self.next_state_head(h_action),
            rewards=None if self.reward_head is None else self.reward_head(h_action).squeeze(-1),
        )

    def forward_batch(self, batch: Batch, prompt: torch.Tensor | None) -> Outputs:
        return self(
            batch.states,
            batch.actions,
            batch.rtg if self.cfg.condition_on_rtg else None,
            batch.timesteps,
            prompt,
            batch.agents,
        )

    def action_error(self, out: Outputs, batch: Batch) -> torch.Tensor:
        """Per-step error of predicted actions (MSE or masked cross-entropy): (B, K)."""
        return self.action_head.error(out.actions, batch.actions, batch.avail)

    # ------------------------------------------------------ banded attention
    def band_mask(self, q_pos: torch.Tensor, k_pos: torch.Tensor, prompt_len: int) -> torch.Tensor:
        """(Tq, P + Tk) bool: history tokens at stream positions ``q_pos`` attend to the whole
        prompt, and to the earlier history tokens ``k_pos`` of their own and K-1 previous steps
        (a key position of -1 is an empty cache slot)."""
        n, K = self.tokens_per_step, self.cfg.context_len
        q, k = q_pos[:, None], k_pos[None, :]
        band = (k <= q) & (k // n > q // n - K) & (k >= 0)  # (Tq, Tk)
        return torch.cat([band.new_ones(len(q_pos), prompt_len), band], dim=1)

    def full_mask(self, prompt_len: int, T: int, device: torch.device) -> torch.Tensor:
        """(P + T, P + T) banded mask of a prompt and T history tokens; the prompt is causal
        among itself, as under the plain causal mask."""
        pos = torch.arange(T, device=device)
        top = torch.ones(prompt_len, prompt_len + T, dtype=torch.bool, device=device)
        return torch.cat([top.tril(), self.band_mask(pos, pos, prompt_len)], dim=0)

    def start_decoding(self, prompt: torch.Tensor | None) -> DecodeState:
        """A fresh decoding state holding the keys and values of the (B, P, d) prompt."""
        if self.cfg.attention != "banded":
            raise ValueError("incremental decoding needs model.attention='banded'")
        device = self.embed_type.weight.device
        n, K = self.tokens_per_step, self.cfg.context_len
        P = 0 if prompt is None else prompt.shape[1]
        # History slots for K + 1 steps: the action of step t-1, decoded with step t, still
        # sees step t-K, whose slots step t's own tokens would otherwise overwrite.
        ring = (K + 1) * n
        cache = KVCache(self.cfg.n_layer, P + ring)
        if prompt is not None:
            cache.at = torch.arange(P, device=device)
            causal = torch.ones(P, P + ring, dtype=torch.bool, device=device).tril()
            self.backbone(prompt + self.embed_type.weight[0], causal, cache)
        pos = torch.full((ring,), -1, dtype=torch.long, device=device)
        return DecodeState(cache, P, pos)

    def decode_step(
        self,
        state: DecodeState,
        states: torch.Tensor,
        actions: torch.Tensor,
        rtg: torch.Tensor | None,
        timesteps: torch.Tensor,
        agents: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The action prediction (B, act) at step t = ``state.t`` (an action, or logits of
        discrete actions), computing only new tokens.

        Takes the steps [t-1, t] (just [0] at t = 0) as (B, W, ...) tensors, like
        :meth:`forward`; action t is ignored. New tokens are action t-1, [return-to-go t] and
        state t; they overwrite the cache slots of the tokens K + 1 steps older, which no
        query sees any more. Equal, to float rounding, to the last action of a banded
        :meth:`forward` over the whole episode (in eval mode: decoding applies no dropout).
        """
        n, t = self.tokens_per_step, state.t
        if states.shape[1] != min(t + 1, 2):
            raise ValueError(
                f"decode_step at t={t} takes {min(t + 1, 2)} steps, got {states.shape[1]}"
            )
        x = self.embed_steps(states, actions, rtg, timesteps, agents)  # (B, W * n, d)
        x = x[:, n - 1 : 2 * n - 1] if t > 0 else x[:, : n - 1]  # (B, n_new, d): [a], [r], s
        q_pos = torch.arange(t * n + n - 1 - x.shape[1], t * n + n - 1, device=x.device)
        slots = q_pos % len(state.pos)
        state.pos[slots] = q_pos  # (ring,) the position each history slot holds
        state.cache.at = state.prompt_len + slots
        mask = self.band_mask(q_pos, state.pos, state.prompt_len)  # (n_new, P + ring)
        # Only the state token's output is read: the last layer skips the other queries.
        h = self.backbone(x, mask, state.cache, slice(-1, None))[:, -1]  # (B, d): state t
        state.t = t + 1
        return self.action_head(h)

    # ------------------------------------------------------------- utilities
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def optimizer_groups(self, weight_decay: float) -> list[dict]:
        """Decay matrices only (nanoGPT): biases and LayerNorm gains are not shrunk."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
