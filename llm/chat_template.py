"""A checkpoint's chat template (Jinja2), rendered the way transformers' `apply_chat_template` renders it.

The template comes from the checkpoint (tokenizer_config.json's `chat_template`, or chat_template.jinja) and is
untrusted code: it runs in Jinja2's ImmutableSandboxedEnvironment with transformers' settings (trim_blocks,
lstrip_blocks, loop controls, `{% generation %}` blocks) and globals: `raise_exception(msg)`, `strftime_now(fmt)`,
a `tojson` filter that does not HTML-escape, `dict`, and a `namespace` that refuses underscore names. It sees
`messages`, `add_generation_prompt`, the tokenizer's special tokens (`bos_token`, `eos_token`, ...) and any extra
variables (e.g. Qwen3's `enable_thinking`).

Control tokens typed into a message (a document holding "<|im_end|>") must stay text. As transformers'
`sanitize_control_tokens` does, `mark_control_tokens` wraps them in private-use markers before rendering and the
tokenizer (llm/tokenizer.py) encodes a marked token as plain text; CONTROL_RE finds the marks again.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from contextvars import ContextVar
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from common.errors import InvalidArgumentError

# Private-use characters around control tokens typed into messages (the ones transformers uses).
MARK_START, MARK_END = "\U000f0000", "\U000f0001"
_PROBE = "\U000f0002 system probe"  # content that can only appear in a rendering if the template printed it


class ChatTemplateError(InvalidArgumentError):
    """The template refused the conversation (its raise_exception, e.g. roles that do not alternate) or failed."""


class _GenerationBlocks(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` (transformers' assistant-mask blocks): records the character spans
    of what they render while a tracker list is set."""

    tags = {"generation"}

    def __init__(self, environment: jinja2.Environment):
        super().__init__(environment)
        self.spans: ContextVar[tuple[list[str], list[tuple[int, int]]] | None] = ContextVar("spans", default=None)
        environment.extend(generation_spans=self.spans)

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_track"), [], [], body).set_lineno(lineno)

    def _track(self, caller: Any) -> str:
        text = caller()
        tracking = self.spans.get()
        if tracking is not None:
            blocks, spans = tracking
            start = len("".join(blocks))
            spans.append((start, start + len(text)))
        return text


class _Namespace(jinja2.utils.Namespace):
    """Jinja's namespace(), refusing underscore attributes (no way into CPython internals)."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: N805 (Jinja's signature trick)
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _refuse_underscore(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _refuse_underscore(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)


def _refuse_underscore(name: Any) -> None:
    if isinstance(name, str) and name.startswith("_"):
        raise jinja2.exceptions.SecurityError(f"chat templates may not set underscore attributes ({name!r})")


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys: bool = False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@functools.lru_cache(maxsize=32)
def _compile(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationBlocks, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now, dict=dict, namespace=_Namespace)
    try:
        return env.from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as exc:
        raise InvalidArgumentError(f"the chat template does not parse: {exc} (line {exc.lineno})") from exc


class ChatTemplate:
    """One compiled chat template. render() is thread-safe (the template is immutable; spans are per context)."""

    def __init__(self, source: str):
        self.source = source
        self.template = _compile(source)

    def render(
        self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True, **variables: Any
    ) -> str:
        """The conversation as the template writes it; ChatTemplateError when the template refuses it."""
        return self.render_with_spans(messages, add_generation_prompt, **variables)[0]

    def render_with_spans(
        self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True, **variables: Any
    ) -> tuple[str, list[tuple[int, int]]]:
        """(rendering, character spans of its `{% generation %}` blocks; [] when it has none)."""
        blocks: list[str] = []
        spans: list[tuple[int, int]] = []
        tracker: ContextVar = self.template.environment.generation_spans  # type: ignore[attr-defined]
        token = tracker.set((blocks, spans))
        try:
            for block in self.template.generate(
                messages=[dict(m) for m in messages], add_generation_prompt=add_generation_prompt, **variables
            ):
                blocks.append(block)
        except jinja2.exceptions.TemplateError as exc:  # raise_exception, undefined names, sandbox violations
            raise ChatTemplateError(f"the model's chat template refused the conversation: {exc}") from exc
        finally:
            tracker.reset(token)
        return "".join(blocks), spans

    @functools.cached_property
    def has_generation_blocks(self) -> bool:
        return re.search(r"\{%-?\s*generation\s*-?%\}", self.source) is not None

    @functools.cached_property
    def accepts_system_role(self) -> bool:
        """Whether a system message renders (Mixtral-Instruct's template raises on one; some drop it silently)."""
        try:
            out = self.render([{"role": "system", "content": _PROBE}, {"role": "user", "content": "?"}])
        except ChatTemplateError:
            return False
        return _PROBE in out

    @functools.cached_property
    def literal_text(self) -> str:
        """The template's literal strings, joined by NULs: the added tokens found here are control tokens."""
        ast = self.template.environment.parse(self.source)
        literals = {n.data for n in ast.find_all(jinja2.nodes.TemplateData)}
        literals |= {n.value for n in ast.find_all(jinja2.nodes.Const) if isinstance(n.value, str)}
        return "\0".join(literals)


def control_token_re(tokens: Iterable[str]) -> re.Pattern[str]:
    """A regex matching any of `tokens`, longest first (a token wins over the tokens it contains)."""
    ordered = sorted(set(tokens), key=len, reverse=True)
    return re.compile("|".join(map(re.escape, ordered)) or "(?!)")  # (?!) never matches


def marked_re(tokens: Iterable[str]) -> re.Pattern[str]:
    """Matches a marked control token (group 1) or a lone marker (group 1 None)."""
    return re.compile(f"{MARK_START}({control_token_re(tokens).pattern}){MARK_END}|[{MARK_START}{MARK_END}]")


def mark_control_tokens(obj: Any, tokens_re: re.Pattern[str]) -> Any:
    """obj (a string, or messages: lists and dicts of them) with every control token wrapped in the markers; markers
    already there are dropped first, so none can be forged. Dict keys are left alone."""
    if isinstance(obj, str):
        obj = obj.replace(MARK_START, "").replace(MARK_END, "")
        return tokens_re.sub(f"{MARK_START}\\g<0>{MARK_END}", obj)
    if isinstance(obj, Mapping):
        return {k: mark_control_tokens(v, tokens_re) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [mark_control_tokens(v, tokens_re) for v in obj]
    return obj
