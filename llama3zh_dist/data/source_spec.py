"""One source of a dataset, as the config names it (``data.sources.<name>`` or ``data=files``)."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass
class SourceSpec:
    name: str
    format: str
    files: list[str]  # resolved local paths (empty for a Hub dataset)
    weight: float = 1.0
    hub: str | None = None
    hub_subset: str | None = None
    split: str = "train"
    revision: str | None = None
    columns: dict | None = None
    prompt_template: str | None = None
    system_prompt: str | None = None
    id_field: str | None = None
    roles: dict | None = None  # the source's own role names -> system/user/assistant (wins over aliases)

    def settings(self) -> dict:
        """What of this spec changes the output (for the fingerprint), minus file contents."""
        return {
            "name": self.name,
            "format": self.format,
            "files": [os.path.basename(f) for f in self.files],
            "weight": self.weight,
            "hub": self.hub,
            "hub_subset": self.hub_subset,
            "split": self.split,
            "revision": self.revision,
            "columns": self.columns,
            "prompt_template": self.prompt_template,
            "system_prompt": self.system_prompt,
            "id_field": self.id_field,
            "roles": self.roles,
        }
