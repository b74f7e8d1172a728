"""Monetary cost per instance from token counts and a dated, editable price list (``prices.yaml``).

Prices are USD per 1K input / output tokens. The packaged list prices the embedded and local models at 0
(``default``) and carries GPT-4 / GPT-3.5 style API prices with their date (``as_of``) and source. A user
file given with ``--prices FILE`` is merged over the packaged one (its ``models`` added or replaced, its
other keys replacing the packaged ones). The paper's cost analysis priced API models; this module only does
the arithmetic, it never calls an API.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

PRICES_FILE = Path(__file__).with_name("prices.yaml")


class PriceError(ValueError):
    """A price file is missing, malformed, or has no price for a model."""


@dataclass(frozen=True)
class Price:
    input: float
    output: float
    note: str = ""


@dataclass(frozen=True)
class Prices:
    as_of: str
    source: str
    models: dict[str, Price]
    default: Price | None
    files: tuple[str, ...] = ()

    def price(self, model: str) -> Price:
        """The price of ``model``: exact name, then without ``openai:``, then ``default``."""
        for name in (model, model.removeprefix("openai:")):
            if name in self.models:
                return self.models[name]
        if self.default is None:
            raise PriceError(f"no price for model {model!r} and no default in {', '.join(self.files)}")
        return self.default

    def cost(self, model: str, input_tokens: float, output_tokens: float = 0.0) -> float:
        p = self.price(model)
        return input_tokens / 1000.0 * p.input + output_tokens / 1000.0 * p.output


def _price(where: str, data: Any) -> Price:
    if not isinstance(data, dict):
        raise PriceError(f"{where}: expected a mapping with input and output, got {data!r}")
    unknown = sorted(set(data) - {"input", "output", "note"})
    if unknown:
        raise PriceError(f"{where}: unknown field(s) {', '.join(unknown)}")
    values = {}
    for side in ("input", "output"):
        v = data.get(side)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise PriceError(f"{where}.{side}: expected a non-negative number (USD per 1K tokens), got {v!r}")
        values[side] = float(v)
    return Price(values["input"], values["output"], str(data.get("note", "")))


def _read(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise PriceError(f"price file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise PriceError(f"price file {path}: expected a mapping at the top level")
    unknown = sorted(set(data) - {"as_of", "source", "default", "models"})
    if unknown:
        raise PriceError(f"price file {path}: unknown key(s) {', '.join(unknown)}")
    if not isinstance(data.get("models", {}), dict):
        raise PriceError(f"price file {path}: 'models' must be a mapping of model name to price")
    return data


def load_prices(path: str | Path | None = None) -> Prices:
    """The packaged prices, with the file at ``path`` (if given) merged over them."""
    files = [PRICES_FILE] + ([Path(path)] if path is not None else [])
    merged: dict[str, Any] = {"models": {}}
    for f in files:
        data = _read(f)
        models = {name: _price(f"{f}: models.{name}", v) for name, v in (data.get("models") or {}).items()}
        merged["models"].update(models)
        for key in ("as_of", "source"):
            if key in data:
                merged[key] = str(data[key])
        if "default" in data:
            merged["default"] = None if data["default"] is None else _price(f"{f}: default", data["default"])
    if "as_of" not in merged:
        raise PriceError(f"price files {', '.join(map(str, files))}: 'as_of' (the prices' date) is missing")
    return Prices(
        as_of=merged["as_of"],
        source=merged.get("source", ""),
        models=merged["models"],
        default=merged.get("default"),
        files=tuple(str(f) for f in files),
    )


def cost(model: str, input_tokens: float, output_tokens: float = 0.0, prices: Prices | None = None) -> float:
    """USD for one request of ``input_tokens`` in and ``output_tokens`` out on ``model``."""
    return (prices or load_prices()).cost(model, input_tokens, output_tokens)
