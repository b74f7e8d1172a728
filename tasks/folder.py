"""A task declared by a folder, with no Python: ``task.yaml`` + ``template.yaml`` + data files.

Records come from one JSONL or CSV file per split (``data``); ``fields`` says which columns hold the id, query
and answer, and ``query_format`` renders the query shown in the prompt. Every column of a record is kept in
``Instance.meta`` (a ``python_tests`` metric reads its asserts there, a user metric gets the whole record).
"""

from __future__ import annotations

from pathlib import Path

from promptintern.tasks.base import Instance, Task
from promptintern.tasks.metrics import load_function
from promptintern.tasks.records import load_records, query_text
from promptintern.tasks.spec import TaskFile


class FolderTask(Task):
    """A user task: its folder holds ``task.yaml``, ``template.yaml``, the documents and the data."""

    def __init__(self, folder: Path, spec: TaskFile, template: str = "paper"):
        super().__init__(template=template)
        self.folder = Path(folder).resolve()
        self.__dict__["spec"] = spec  # already validated by the registry
        self.splits = tuple(spec.data)
        extract = spec.extract
        self._extractor = None if extract == "answer_format" else load_function(extract, self.folder, "extract")

    @property
    def directory(self) -> Path:
        return self.folder

    def load(self, split: str) -> list[Instance]:
        self.check_split(split)
        fields = self.spec.fields
        return [
            Instance(tid, split, query_text(self.spec, rec), str(rec[fields.answer]).strip(), rec,
                     group=None if rec.get(fields.group) is None else str(rec[fields.group]))  # fmt: skip
            for tid, rec in load_records(self.folder / self.spec.data[split], self.spec, split)
        ]

    def extract(self, output: str) -> str:
        if self._extractor is not None:
            return str(self._extractor(output))
        return super().extract(output)


__all__ = ["FolderTask"]
