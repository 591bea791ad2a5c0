"""Chat templates: the one place a prompt becomes the text a model sees.

An Instruct model (Qwen2.5-*-Instruct, Llama-3.2-*-Instruct) was tuned on its chat template, so a
raw prompt is out of distribution for it. ``render_prompt`` wraps a prompt as one user message with
the generation prompt, when the option is on and the tokenizer has a template; a tokenizer without
one (the embedded tiny base) keeps the plain prompt. Evaluation, distillation, expert, router and
ReMix training all go through it, so training and evaluation see the same text.

Rendered text already holds the template's special tokens (BOS included where the template writes
one): tokenise it with ``add_special_tokens=False``, as every loramix tokeniser call does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from loramix.errors import DataError

ROLES = ("system", "user", "assistant")


def has_chat_template(tokenizer) -> bool:
    """Whether the tokenizer carries a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def uses_chat_template(tokenizer, chat_template: bool = True) -> bool:
    """Whether prompts are rendered: the option is on and the tokenizer has a template."""
    return bool(chat_template) and has_chat_template(tokenizer)


def user_message(prompt: str) -> list[dict[str, str]]:
    """A prompt as a one-message conversation (TRL's conversational ``prompt`` format)."""
    return [{"role": "user", "content": prompt}]


def render_prompt(tokenizer, prompt: str, chat_template: bool = True) -> str:
    """``prompt`` as the model sees it: one user message rendered with the generation prompt when
    ``uses_chat_template``, else unchanged."""
    if not uses_chat_template(tokenizer, chat_template):
        return prompt
    return tokenizer.apply_chat_template(user_message(prompt), tokenize=False, add_generation_prompt=True)


def render_prompts(tokenizer, prompts: Sequence[str], chat_template: bool = True) -> list[str]:
    """``render_prompt`` of each prompt."""
    return [render_prompt(tokenizer, p, chat_template) for p in prompts]


def check_messages(messages: Any, path: str | Path, where: str) -> list[dict[str, str]]:
    """A ``messages`` field checked: a non-empty list of ``{"role", "content"}`` objects (roles
    system/user/assistant, content a string), the last one the assistant's, with something before
    it. Anything else is a DataError naming the file, line and field."""
    field = f"{where}: field 'messages'"
    if not isinstance(messages, list) or len(messages) < 2:
        raise DataError(path, field, "must be a list of at least two messages (a prompt, then the assistant's reply)")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise DataError(path, f"{field}[{i}]", f"must be an object with role and content, got {type(m).__name__}")
        if m.get("role") not in ROLES:
            raise DataError(path, f"{field}[{i}].role", f"must be one of {', '.join(ROLES)}, got {m.get('role')!r}")
        if not isinstance(m.get("content"), str):
            raise DataError(path, f"{field}[{i}].content", "missing or not a string")
    if messages[-1]["role"] != "assistant" or not messages[-1]["content"]:
        raise DataError(path, f"{field}[{len(messages) - 1}]",
                        "the last message must be the assistant's, with non-empty content")
    return messages


def render_messages(tokenizer, messages: list[dict[str, str]], path: str | Path, where: str) -> tuple[str, str]:
    """``(prompt, completion)`` of a conversation: the prompt is every message but the last,
    rendered with the generation prompt; the completion is the rest of the fully rendered
    conversation (the assistant's reply and the template's end-of-turn). A tokenizer without a
    template, or a template that does not render the prompt as a prefix of the conversation (so no
    clean cut exists), is refused naming the file and line."""
    if not has_chat_template(tokenizer):
        raise DataError(path, f"{where}: field 'messages'",
                        "chat rows need a tokenizer with a chat template, and this base model's has none; "
                        "give prompt/completion rows instead")
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full.startswith(prompt) or len(full) == len(prompt):
        raise DataError(path, f"{where}: field 'messages'",
                        "the tokenizer's chat template does not render the prompt (all messages but the last, "
                        "with the generation prompt) as a prefix of the whole conversation, so the assistant's "
                        "reply cannot be cut out for completion-only loss")
    return prompt, full[len(prompt):]


__all__ = ["ROLES", "check_messages", "has_chat_template", "render_messages", "render_prompt", "render_prompts",
           "user_message", "uses_chat_template"]
