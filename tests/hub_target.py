"""A Hub-like upload target on local disk, for push tests (the real Hub is unreachable here).

It implements the two ``HfApi`` calls that ``push_to_hub``/``push_bundle`` make, copying the
folder where the Hub would store the repo, so that what was "pushed" can be loaded back.
"""

from __future__ import annotations

import shutil
from pathlib import Path


class LocalHub:
    def __init__(self, root: Path):
        self.root = root

    def create_repo(self, repo_id: str, private: bool, exist_ok: bool, repo_type: str) -> None:
        (self.root / repo_id).mkdir(parents=True, exist_ok=exist_ok)

    def upload_folder(self, repo_id: str, folder_path: str, path_in_repo, commit_message: str,
                      repo_type: str) -> None:
        shutil.copytree(folder_path, self.root / repo_id / (path_in_repo or ""), dirs_exist_ok=True)
