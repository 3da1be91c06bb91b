"""The single math prompt of this project.

The paper (GXPO, Sec. 3.1) uses "the same prompts, rewards, decoding setup, KL penalty, and GRPO
loss for all methods" but does not print the prompt. We use the common zero-shot chain-of-thought
instruction for Qwen2.5 / Llama-3.2 instruct models: the problem, a blank line, then the request to
reason step by step and put the final answer in ``\\boxed{}`` -- which is what the reward
(:mod:`verl_ext.rewards.math_reward`) grades. It is applied identically to the training set and to
all five evaluation sets, as one user message; the model's own chat template (applied by verl's
rollout) adds any system prompt.
"""

from __future__ import annotations

__all__ = ["MATH_INSTRUCTION", "format_math_prompt", "make_math_messages"]

#: Appended to every problem statement.
MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


def format_math_prompt(question: str) -> str:
    """``"<problem>\\n\\n<MATH_INSTRUCTION>"`` (the problem is stripped of outer whitespace)."""
    return f"{str(question).strip()}\n\n{MATH_INSTRUCTION}"


def make_math_messages(question: str) -> list[dict]:
    """Chat messages for verl's ``prompt`` column: one user turn with :func:`format_math_prompt`."""
    return [{"role": "user", "content": format_math_prompt(question)}]
