"""The math prompts this project can write into the parquet files (``--prompt`` of
:mod:`verl_ext.data.prepare_math`).

The paper (GXPO, Sec. 3.1) uses "the same prompts, rewards, decoding setup, KL penalty, and GRPO
loss for all methods" but does not print the prompt. Its authors' paper-protocol data script
(``Code/SFPO/train-scripts/prepare_gxpo_data.sh`` in ``SwapniL-afk-now/final-gxpo``) writes the
training set with verl's MATH example instruction appended after a space, and its evaluation
converters (e.g. ``examples/data_preprocess/test_math500.py``) wrap each problem in SFPO's
"Please solve the following math problem: ..." prompt. The styles:

``authors`` (default; the paper preset's)
    ``verl`` for the training set, ``sfpo`` for the evaluation sets -- what the authors' scripts do.
``verl``
    ``"<problem> Let's think step by step and output the final answer within \\boxed{}."``
    (verl's ``examples/data_preprocess/math_dataset.py``), for every set.
``sfpo``
    SFPO's prompt (``examples/data_preprocess/lighteval_math.py`` of the SFPO code), for every set.
``qwen``
    ``"<problem>\\n\\nPlease reason step by step, and put your final answer within \\boxed{}."``,
    Qwen2.5-Math's zero-shot chain-of-thought instruction, for every set.

Every style asks for the final answer in ``\\boxed{}``, which is what the reward
(:mod:`verl_ext.rewards.math_reward`) grades. The prompt is one user message; the model's own chat
template (applied by verl's rollout) adds any system prompt.
"""

from __future__ import annotations

__all__ = [
    "MATH_INSTRUCTION",
    "VERL_INSTRUCTION",
    "PROMPT_STYLES",
    "DEFAULT_PROMPT_STYLE",
    "format_math_prompt",
    "make_math_messages",
    "style_for_split",
]

#: Qwen2.5-Math's instruction, appended after a blank line (style ``qwen``).
MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
#: verl's MATH example instruction, appended after a space (style ``verl``).
VERL_INSTRUCTION = "Let's think step by step and output the final answer within \\boxed{}."
_SFPO_TEMPLATE = (
    "Please solve the following math problem: {problem}. The assistant first thinks about the reasoning "
    "process step by step and then provides the user with the answer. Return the final answer in "
    "\\boxed{{}} tags, for example \\boxed{{1}}. Let's solve this step by step. "
)

#: Accepted ``--prompt`` values.
PROMPT_STYLES = ("authors", "verl", "sfpo", "qwen")
DEFAULT_PROMPT_STYLE = "authors"


def style_for_split(style: str, split: str) -> str:
    """The concrete style of ``style`` for a ``"train"`` or ``"test"`` split (``authors`` differs)."""
    if style not in PROMPT_STYLES:
        raise ValueError(f"unknown prompt style {style!r}; choose from {', '.join(PROMPT_STYLES)}")
    if style == "authors":
        return "verl" if split == "train" else "sfpo"
    return style


def format_math_prompt(question: str, style: str = DEFAULT_PROMPT_STYLE, split: str = "test") -> str:
    """The user message for ``question`` (stripped of outer whitespace) in ``style``."""
    q = str(question).strip()
    concrete = style_for_split(style, split)
    if concrete == "qwen":
        return f"{q}\n\n{MATH_INSTRUCTION}"
    if concrete == "verl":
        return f"{q} {VERL_INSTRUCTION}"
    return _SFPO_TEMPLATE.format(problem=q)


def make_math_messages(question: str, style: str = DEFAULT_PROMPT_STYLE, split: str = "test") -> list[dict]:
    """Chat messages for verl's ``prompt`` column: one user turn with :func:`format_math_prompt`."""
    return [{"role": "user", "content": format_math_prompt(question, style, split)}]
