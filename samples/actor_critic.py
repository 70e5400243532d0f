"""Actor-critic policy gradient with two reward terms that pull the policy apart.

A walker picks a speed: `reward_progress` favours fast actions everywhere, `reward_energy`
penalises them on steep uphill states, so the two policy-gradient surrogates conflict moderately.
`parameters` selects only the actor, so the critic (a per-term baseline) is not analysed.
Run: `gradtool inspect samples/actor_critic.py` or `gradtool pareto samples/actor_critic.py`.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

SEED = 3
N_STEPS = 512
STATE_DIM = 8
HIDDEN = 64
SPEEDS = (0.0, 1.0, 2.0, 3.0)  # the action is an index into SPEEDS
REWARD_TERMS = ("progress", "energy")


class ActorCritic(nn.Module):
    """Separate actor (action logits) and critic (one value per reward term) networks."""

    def __init__(self) -> None:
        super().__init__()
        self.actor = nn.Sequential(
            nn.Linear(STATE_DIM, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, len(SPEEDS))
        )
        self.critic = nn.Sequential(
            nn.Linear(STATE_DIM, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, len(REWARD_TERMS))
        )

    def forward(self, states: torch.Tensor) -> tuple[torch.distributions.Categorical, torch.Tensor]:
        policy = torch.distributions.Categorical(logits=self.actor(states))
        return policy, self.critic(states)


model = ActorCritic


def _make_rollout() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Synthetic transitions: states, actions of a behaviour policy, one reward per term."""
    gen = torch.Generator().manual_seed(SEED)
    states = torch.randn(N_STEPS, STATE_DIM, generator=gen)
    actions = torch.randint(len(SPEEDS), (N_STEPS,), generator=gen)
    speed = torch.tensor(SPEEDS)[actions]
    slope = states[:, 0]  # > 0 means uphill; the energy cost starts above 0.5
    progress = speed + 0.3 * torch.randn(N_STEPS, generator=gen)
    energy = -(speed**2) * torch.relu(slope - 0.5)
    return states, actions, torch.stack([progress, energy], dim=1)


STATES, ACTIONS, REWARDS = _make_rollout()


def losses(model: ActorCritic) -> dict[str, torch.Tensor]:
    device = next(model.parameters()).device
    states, actions, rewards = STATES.to(device), ACTIONS.to(device), REWARDS.to(device)
    policy, values = model(states)
    log_prob = policy.log_prob(actions)
    advantages = rewards - values.detach()  # the critic is a baseline, not trained by these
    return {
        f"reward_{term}": -(log_prob * advantages[:, k]).mean()
        for k, term in enumerate(REWARD_TERMS)
    }


def parameters(model: ActorCritic) -> Iterator[tuple[str, nn.Parameter]]:
    return ((name, p) for name, p in model.named_parameters() if name.startswith("actor."))
