"""A prompt kept in its three parts (template, examples, query) so stages can compress or drop each.

Rendering: the template (instruction + API documents) is the system turn, the ``## Example i`` blocks and
the question the user turn; with a tokenizer that has a chat template, that template is applied exactly as
the model will see it (this string is what token accounting counts).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from promptintern.tasks.base import Instance, Task, Template

EXAMPLES_HEADER = "Here are some examples:"
QUESTION_HEADER = "Now answer the following question:"


@dataclass(frozen=True)
class Prompt:
    """Template / examples / query of one instance; empty parts are omitted when rendered."""

    query: str
    instruction: str = ""
    documents: str = ""
    examples: tuple[str, ...] = ()

    @property
    def template(self) -> str:
        return "\n\n".join(p for p in (self.instruction, self.documents) if p)

    @property
    def user(self) -> str:
        if not self.examples:
            return self.query
        shots = "\n\n".join(self.examples)
        return f"{EXAMPLES_HEADER}\n\n{shots}\n\n{QUESTION_HEADER}\n{self.query}"

    def with_template(self, template: Template | None) -> Prompt:
        if template is None:
            return replace(self, instruction="", documents="")
        return replace(self, instruction=template.instruction, documents=template.documents)

    def to_messages(self, answer: str | None = None) -> list[dict[str, str]]:
        """Chat messages; ``answer`` adds the assistant turn (used for training)."""
        messages = [{"role": "system", "content": self.template}] if self.template else []
        messages.append({"role": "user", "content": self.user})
        if answer is not None:
            messages.append({"role": "assistant", "content": answer})
        return messages

    def to_text(self) -> str:
        """Plain-text rendering for models without a chat template."""
        return "\n\n".join(p for p in (self.template, self.user) if p) + "\n"

    def render(self, tokenizer=None) -> str:
        """The exact model input: the chat template with a generation prompt, or plain text."""
        if tokenizer is not None and getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template(
                self.to_messages(), tokenize=False, add_generation_prompt=True
            )
        return self.to_text()


def build_prompt(
    task: Task,
    instance: Instance,
    template: Template | None = None,
    examples: Sequence[Instance] = (),
) -> Prompt:
    """Assemble ``instance``'s prompt from a (possibly compressed or absent) template and k examples."""
    if any(ex.id == instance.id for ex in examples):
        raise ValueError(f"instance {instance.id} cannot be its own example")
    shots = tuple(task.format_example(i, ex) for i, ex in enumerate(examples, 1))
    return Prompt(query=instance.query, examples=shots).with_template(template)
