"""The git facts a release needs (commit, dirty flag) and its tag, through the ``git`` program.

Arguments are passed as a list, never through a shell, so tag names and messages built from model names
cannot run anything.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError, ReleaseKitError


@dataclass(frozen=True)
class GitRepo:
    root: Path

    @classmethod
    def find(cls, directory: Path) -> GitRepo | None:
        """The repository that holds ``directory``, or None when it is in none (or git is missing)."""
        try:
            done = subprocess.run(
                ["git", "rev-parse", "--show-toplevel"], cwd=directory, capture_output=True, text=True, check=False
            )
        except FileNotFoundError:
            return None
        return cls(Path(done.stdout.strip())) if done.returncode == 0 else None

    def _git(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run(["git", *args], cwd=self.root, capture_output=True, text=True, check=False)
        if check and done.returncode != 0:
            raise ReleaseKitError(f"git {args[0]} failed in {self.root}: {done.stderr.strip().splitlines()[-1:] or done.returncode}")
        return done

    def head(self) -> str:
        done = self._git("rev-parse", "--verify", "HEAD^{commit}", check=False)
        if done.returncode != 0:
            raise InputError(f"git repository {self.root} has no commit yet")
        return done.stdout.strip()

    def changed_files(self, *, ignore: tuple[Path, ...] = ()) -> list[str]:
        """Tracked files with uncommitted changes (the code the manifest's sha would not describe).

        Untracked files are not counted: reports and caches live there. ``ignore`` are files release-kit
        itself writes (the CHANGELOG), so that a re-run after a crash is not refused for its own edit.
        """
        done = self._git("status", "--porcelain", "--untracked-files=no", "-z")
        ignored = {path.resolve() for path in ignore}
        changed = []
        for entry in filter(None, done.stdout.split("\0")):
            name = entry[3:]
            if (self.root / name).resolve() not in ignored:
                changed.append(name)
        return changed

    def tag_commit(self, name: str) -> str | None:
        """The commit the tag points to, or None when there is no such tag."""
        done = self._git("rev-parse", "--verify", "--quiet", f"refs/tags/{name}^{{commit}}", check=False)
        return done.stdout.strip() if done.returncode == 0 else None

    def create_tag(self, name: str, commit: str, message: str) -> None:
        # An annotated tag needs a tagger; CI runners often have no git identity configured.
        identity = [] if self._git("config", "user.email", check=False).returncode == 0 else [
            "-c", "user.name=release-kit", "-c", "user.email=release-kit@localhost"
        ]
        done = subprocess.run(
            ["git", *identity, "tag", "--annotate", "--message", message, name, commit],
            cwd=self.root, capture_output=True, text=True, check=False,
        )
        if done.returncode != 0:
            raise ReleaseKitError(f"git tag {name} failed in {self.root}: {done.stderr.strip()}")

    def valid_tag_name(self, name: str) -> bool:
        return not name.startswith("-") and self._git("check-ref-format", f"refs/tags/{name}", check=False).returncode == 0
