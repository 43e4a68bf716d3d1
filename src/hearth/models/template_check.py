"""Whether a chat template is one Hearth can render: Jinja that compiles, not Go's text/template
(Ollama's). Below presets and model defaults, which both check the templates they are given.
Jinja is imported only when a template is checked, so `hearth list` never loads it."""

from __future__ import annotations

import re

__all__ = ["GoTemplateError", "check_jinja_template"]

# Go's text/template: an action on a field (`{{ .Prompt }}`) or a Go keyword (`{{ range … }}`,
# `{{- end }}`); Jinja writes control flow as `{% … %}` and never starts a name with a dot.
_GO_ACTION = re.compile(r"\{\{-?\s*(?:\.|\$|(?:if|range|with|else|end|define|block|template)\b)")


class GoTemplateError(ValueError):
    """A template in Go's syntax (Ollama's), which Hearth cannot render."""


def check_jinja_template(template: str) -> str:
    """`template` if it is a Jinja chat template that compiles; raises GoTemplateError for Go
    syntax and ValueError for broken Jinja."""
    if _GO_ACTION.search(template):
        raise GoTemplateError(
            "the template is in Go's template syntax (Ollama's {{ .Prompt }}, {{ range }}); "
            "Hearth renders chat templates in Jinja, as in a GGUF's tokenizer.chat_template"
        )
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    try:
        ImmutableSandboxedEnvironment(extensions=["jinja2.ext.loopcontrols"]).parse(template)
    except TemplateError as exc:
        raise ValueError(f"the template is not valid Jinja: {exc}") from exc
    return template
