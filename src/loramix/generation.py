"""Batched text generation for any HF causal LM, PEFT model or loramix mixture: left padding,
greedy or sampled, with a flag saying whether each completion finished (produced EOS).

``generate_path`` is ``loramix generate``: free prompts through any saved model (loaded as
``loramix evaluate`` loads it), optionally with each completion token's expert for a mixture."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import torch

from loramix.errors import DataError, LoramixError
from loramix.io import write_jsonl


@dataclass
class Completion:
    text: str
    finished: bool  # ended with EOS rather than hitting max_new_tokens
    tokens: int
    token_ids: list[int] = field(default_factory=list, compare=False, repr=False)  # the ``tokens`` ids


@torch.no_grad()
def generate(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int = 256, batch_size: int = 32,
             do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, num_return_sequences: int = 1,
             seed: int | None = None, before_batch: Callable[[list[int]], object] | None = None,
             label: str | None = None) -> list[list[Completion]]:
    """For each prompt, ``num_return_sequences`` completions. Prompts are batched by length.
    ``before_batch(indices)`` may return a context manager entered around that batch's generate
    (e.g. ``mixture.route_sequences`` for per-prompt routing).

    A prompt whose tokens plus ``max_new_tokens`` exceed the model's context
    (``config.max_position_embeddings``) is refused with a ``LoramixError`` naming its index (and
    ``label``, e.g. the task), before anything is generated: never truncated, never a crash mid-run."""
    import contextlib

    check_context(model, tokenizer, prompts, max_new_tokens, label)

    tokenizer.padding_side = "left"
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = tokenizer.eos_token_id
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: dict[int, list[Completion]] = {}
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
        enc = {k: v.to(device) for k, v in enc.items()}
        if seed is not None:
            torch.manual_seed(seed + start)
        kwargs = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=pad, eos_token_id=eos,
                      num_return_sequences=num_return_sequences)
        if do_sample:
            kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
        ctx = before_batch(idx) if before_batch else contextlib.nullcontext()
        with ctx:
            gen = model.generate(**enc, **kwargs)
        new = gen[:, enc["input_ids"].shape[1]:].cpu()
        for row, tokens in enumerate(new):
            i = idx[row // num_return_sequences]
            ids = tokens.tolist()
            finished = eos is not None and eos in ids
            if finished:
                ids = ids[: ids.index(eos)]
            while ids and ids[-1] == pad:
                ids.pop()
            text = tokenizer.decode(ids, skip_special_tokens=True)
            out.setdefault(i, []).append(Completion(text, finished, len(ids), ids))
    return [out[i] for i in range(len(prompts))]


def context_length(model) -> int | None:
    """``max_position_embeddings`` of a model's (text) config; wrappers (MixtureModel, PeftModel)
    forward ``.config``. None if the model does not say."""
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    n = getattr(config, "max_position_embeddings", None)
    return int(n) if isinstance(n, int) and n > 0 else None


def check_context(model, tokenizer, prompts: Sequence[str], max_new_tokens: int, label: str | None = None,
                  where: Sequence[str] | None = None) -> None:
    """Raise ``LoramixError`` if any prompt (in tokens) plus ``max_new_tokens`` exceeds the context.
    The error names ``where[i]`` (e.g. ``"prompts.jsonl: line 3"``), else ``prompt i``."""
    limit = context_length(model)
    if limit is None or not prompts:
        return
    lengths = [len(ids) for ids in tokenizer(list(prompts), add_special_tokens=False)["input_ids"]]
    for i, n in enumerate(lengths):
        if n + max_new_tokens > limit:
            where_i = where[i] if where is not None else f"prompt {i}"
            where_i = f"{label}: {where_i}" if label else where_i
            raise LoramixError(f"{where_i}: {n} prompt tokens + max_new_tokens {max_new_tokens} = {n + max_new_tokens} "
                               f"exceeds the model's context of {limit} tokens (max_position_embeddings); "
                               "shorten the prompt or lower max_new_tokens")


# --- `loramix generate`: free prompts through any saved model -----------------------------------


@dataclass
class Generated:
    """One prompt's completion as ``loramix generate`` reports it. With routing, ``experts[j]`` is
    the expert that processed completion token j (by ``GenerateResult.routing_rule``); None for a
    token the model never read back (the last one, when ``max_new_tokens`` cut the completion off)."""

    prompt: str
    completion: str
    finished: bool
    tokens: int
    experts: list[int | None] | None = None
    pieces: list[str] | None = field(default=None, repr=False)  # with routing: each token's text
    messages: list[dict[str, str]] | None = None  # a chat row's messages (``prompt``: as rendered)

    def to_row(self) -> dict:
        """The ``--out`` JSONL row: prompt, completion, finished, tokens (and experts, with routing;
        a chat row's messages)."""
        row = {"prompt": self.prompt, "completion": self.completion, "finished": self.finished, "tokens": self.tokens}
        if self.messages is not None:
            row["messages"] = self.messages
        if self.experts is not None:
            row["experts"] = self.experts
        return row


@dataclass
class GenerateResult:
    """Every prompt's ``Generated``, in input order; ``kind`` as ``load_for_eval`` names it. With
    routing: the mixture's expert names and the rule that picked each token's expert."""

    rows: list[Generated]
    kind: str
    expert_names: list[str] | None = None
    routing_rule: str | None = None


class PromptRow(NamedTuple):
    """One row of a prompts file: a ``prompt`` string or chat ``messages`` (ending with the user's
    turn), and where it stands (``line 3``, or ``--prompt 1``) for errors."""

    path: str
    where: str
    prompt: str | None = None
    messages: list[dict[str, str]] | None = None


def read_prompts(path: str | Path) -> list[PromptRow]:
    """The rows of a JSONL prompts file (``loramix.tasks.rows.read_jsonl``): objects with a non-empty
    string ``prompt``, or ``messages`` (``[{"role", "content"}, ...]``, the last one the user's); blank
    lines are skipped. A bad row is a ``DataError`` naming the file, the line and the field."""
    from loramix.chat import ROLES
    from loramix.tasks.rows import read_jsonl

    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file", "not found")
    try:
        rows = read_jsonl(path)
    except UnicodeDecodeError as err:
        raise DataError(path, "file", f"not UTF-8 text ({err.reason})") from None
    out = []
    for where, row in rows:
        if "prompt" not in row and "messages" not in row:
            raise DataError(path, where, "expected a JSON object with a 'prompt' or 'messages' field")
        if "prompt" in row:
            if not isinstance(row["prompt"], str) or not row["prompt"]:
                raise DataError(path, f"{where}: field 'prompt'", f"must be a non-empty string, got {row['prompt']!r}")
            out.append(PromptRow(str(path), where, prompt=row["prompt"]))
            continue
        messages = row["messages"]
        field_ = f"{where}: field 'messages'"
        if not isinstance(messages, list) or not messages:
            raise DataError(path, field_, "must be a non-empty list of {\"role\", \"content\"} objects")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise DataError(path, f"{field_}[{i}]", f"must be an object with role ({', '.join(ROLES)}) "
                                f"and string content, got {m!r}")
        if messages[-1]["role"] != "user":
            raise DataError(path, f"{field_}[{len(messages) - 1}]", "the last message must be the user's "
                            "(the model answers it)")
        out.append(PromptRow(str(path), where, messages=messages))
    if not out:
        raise DataError(path, "file", "no prompts (expected JSONL rows like {\"prompt\": \"...\"})")
    return out


def prompt_text(tokenizer, row: PromptRow, chat_template: bool = True) -> str:
    """The text the model sees for a prompts-file row: a ``prompt`` through
    ``loramix.chat.render_prompt`` (the chat template, when on and the tokenizer has one); ``messages``
    rendered with the tokenizer's chat template and the generation prompt (none: a ``DataError``)."""
    from loramix.chat import has_chat_template, render_prompt

    if row.prompt is not None:
        return render_prompt(tokenizer, row.prompt, chat_template)
    if not has_chat_template(tokenizer):
        raise DataError(row.path, f"{row.where}: field 'messages'", "chat rows need a tokenizer with a chat "
                        "template, and this model's has none; give a 'prompt' string instead")
    return tokenizer.apply_chat_template(row.messages, tokenize=False, add_generation_prompt=True)


def routing_rule(sites: Sequence[str], layer: int | None) -> str:
    """How a token's one expert is picked from its per-site decisions (as ``analysis.token_experts``)."""
    if layer is None:
        return f"the expert most sites chose for the token (majority over {len(sites)} sites; ties: lowest id)"
    return f"the expert chosen at site {sites[layer]} (--layer {layer})"


def generate_rows(model, tokenizer, prompts: Sequence[str], *, show_routing: bool = False, layer: int | None = None,
                  where: Sequence[str] | None = None, **gen_kwargs) -> GenerateResult:
    """``generate`` (one completion per prompt) on a loaded model; a mixture routes as in evaluation.
    ``show_routing`` (mixtures only) keeps each completion token's expert, from the decisions made
    while generating (``evaluate.generate_with_routing`` records them; ``analysis.token_experts``
    reduces the sites to one expert per token). ``where[i]`` names prompt i in errors."""
    from loramix.analysis import token_experts
    from loramix.evaluate import generate_with_routing
    from loramix.mixture import MixtureModel

    if show_routing and not isinstance(model, MixtureModel):
        raise LoramixError("--show-routing needs a loramix mixture (a folder with mixture_config.json)")
    check_context(model, tokenizer, prompts, gen_kwargs.get("max_new_tokens", 256), where=where)
    completions, records = generate_with_routing(model, tokenizer, prompts, collect_routing=show_routing,
                                                 num_return_sequences=1, **gen_kwargs)
    rows = [Generated(p, c[0].text, c[0].finished, c[0].tokens) for p, c in zip(prompts, completions)]
    if not show_routing:
        return GenerateResult(rows, "")
    sites = records[0].sites if records else [s.name for s in model.sites]
    if layer is not None and not -len(sites) <= layer < len(sites):
        raise LoramixError(f"--layer {layer} out of range: the mixture has {len(sites)} sites")
    for rec in records:
        row, ids = rows[rec.example], completions[rec.example][0].token_ids
        routed = token_experts(rec, layer)[rec.n_prompt:].tolist()[: row.tokens]
        row.experts = routed + [None] * (row.tokens - len(routed))
        row.pieces = [tokenizer.decode([t], skip_special_tokens=False, clean_up_tokenization_spaces=False) for t in ids]
    return GenerateResult(rows, "", list(model.expert_names), routing_rule(sites, layer))


def generate_path(model_path: str | Path, prompts: Sequence[str] = (), *, prompts_file: str | Path | None = None,
                  base: str | None = None, out: str | Path | None = None, max_new_tokens: int = 256,
                  batch_size: int = 32, do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                  seed: int = 0, show_routing: bool = False, layer: int | None = None,
                  chat_template: bool = True, experts_dir: str | Path | None = None) -> GenerateResult:
    """``loramix generate``: load ``model_path`` as ``loramix evaluate`` does (``load_for_eval``:
    'default', an HF folder, a PEFT adapter, a mixture), generate for ``prompts`` or the rows of
    ``prompts_file`` (JSONL with ``prompt`` or ``messages``), batched with the KV cache, greedy
    unless ``do_sample`` (``seed`` seeds the sampling). Prompts are rendered with the chat template
    as evaluation renders them (``chat_template``). ``out`` gets one JSONL row per prompt,
    atomically. ``experts_dir``: where a mixture's experts moved. Every input is checked before a
    model is loaded."""
    from loramix.evaluate import check_writable, load_for_eval
    from loramix.mixture import MIXTURE_CONFIG

    if prompts and prompts_file is not None:
        raise LoramixError("give --prompt or --file, not both")
    if prompts_file is not None:
        rows = read_prompts(prompts_file)
        where = [f"{r.path}: {r.where}" for r in rows]
    else:
        rows, where = [PromptRow("--prompt", f"--prompt {i + 1}", prompt=p) for i, p in enumerate(prompts)], None
        if not rows:
            raise LoramixError("no prompts: give --prompt TEXT (repeatable) or --file prompts.jsonl")
        if not all(prompts):
            raise LoramixError("--prompt: empty prompt")
    for name, value in (("--max-new-tokens", max_new_tokens), ("--batch-size", batch_size)):
        if value < 1:
            raise LoramixError(f"{name} must be at least 1, got {value}")
    if do_sample and (temperature <= 0 or not 0 < top_p <= 1):
        raise LoramixError(f"--temperature must be > 0 and --top-p in (0, 1], got {temperature} and {top_p}")
    if layer is not None and not show_routing:
        raise LoramixError("--layer applies with --show-routing only")
    if show_routing and str(model_path) != "default" and Path(model_path).is_dir() \
            and not (Path(model_path) / MIXTURE_CONFIG).is_file():
        raise LoramixError(f"{model_path}: --show-routing needs a loramix mixture (no {MIXTURE_CONFIG})")
    if show_routing and str(model_path) == "default":
        raise LoramixError("--show-routing needs a loramix mixture; 'default' is the plain base model")
    if out is not None:
        check_writable(out)
    model, tok, kind = load_for_eval(model_path, base, experts_dir)
    texts = [prompt_text(tok, r, chat_template) for r in rows]
    result = generate_rows(model, tok, texts, show_routing=show_routing, layer=layer, where=where,
                           max_new_tokens=max_new_tokens, batch_size=batch_size, do_sample=do_sample,
                           temperature=temperature, top_p=top_p, seed=seed if do_sample else None)
    result.kind = kind
    for row, given in zip(result.rows, rows):
        if given.prompt is not None:
            row.prompt = given.prompt  # as the user wrote it (the model saw it rendered, if templated)
        else:
            row.messages = given.messages
    if out is not None:
        write_jsonl(out, [r.to_row() for r in result.rows])
    return result


# --- terminal rendering ----------------------------------------------------------------------------


def routing_legend(result: GenerateResult):
    """A rich ``Text``: each expert's colour and name, and the rule behind a token's colour."""
    from rich.text import Text

    from loramix.analysis import expert_colour

    legend = Text("experts: ")
    for i, name in enumerate(result.expert_names or ()):
        legend.append(f" {i}: {name} ", style=f"black on {expert_colour(i)}")
        legend.append(" ")
    legend.append(f"\ncolour = {result.routing_rule}; uncoloured: a token never read back (cut off by "
                  "--max-new-tokens)", style="dim")
    return legend


def completion_text(row: Generated):
    """A rich ``Text``: the prompt (dim) then the completion; with routing, each completion token
    on its expert's colour (``analysis.expert_colour``), a newline token shown as ↵."""
    from rich.text import Text

    from loramix.analysis import expert_colour

    text = Text()
    text.append(row.prompt, style="dim")
    if row.experts is None or row.pieces is None:
        text.append(row.completion)
        return text
    for piece, expert in zip(row.pieces, row.experts):
        text.append(piece.replace("\n", "\u21b5\n"),
                    style=None if expert is None else f"black on {expert_colour(expert)}")
    return text


def terminal_view(result: GenerateResult):
    """What ``loramix generate`` prints: the legend (with routing), then each prompt and completion."""
    from rich.console import Group
    from rich.text import Text

    parts = [routing_legend(result)] if result.routing_rule is not None else []
    for i, row in enumerate(result.rows):
        status = "" if row.finished else ", cut off by --max-new-tokens"
        parts += [Text(f"[{i}] {row.tokens} tokens{status}", style="bold"), completion_text(row)]
    return Group(*parts)
