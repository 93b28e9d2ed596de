"""The argument parser of every entry point: no prefix matching of long options (`--anno` is not taken as
`--annotation`), "did you mean" for a mistyped flag or choice, and `--version`."""

from __future__ import annotations

import argparse

from common.errors import did_you_mean


class SuiteParser(argparse.ArgumentParser):
    """argparse with allow_abbrev off (a prefix of a flag is an error, never silently the flag) and a suggestion
    after every "unrecognized arguments" / "invalid choice" error; its sub-command parsers are SuiteParsers too."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        add_version(self)

    def _option_strings(self) -> list[str]:
        names = [s for a in self._actions for s in a.option_strings]
        for a in self._actions:  # the sub-commands' flags too: `suite --precison fp16 accuracy` is a typo
            if isinstance(a, argparse._SubParsersAction):
                names += [s for p in a.choices.values() for b in p._actions for s in b.option_strings]
        return list(dict.fromkeys(names))  # each once, in order: the sub-commands share many

    def error(self, message: str):
        """argparse's exit 2, with a did-you-mean for an unrecognized flag or an invalid choice."""
        if message.startswith("unrecognized arguments: "):
            hints = [
                w + did_you_mean(w.split("=", 1)[0], self._option_strings())
                for w in message.split(": ", 1)[1].split()
                if w.startswith("-")
            ]
            if any("did you mean" in h for h in hints):
                message = "unrecognized arguments: " + ", ".join(hints)
        elif "invalid choice: " in message:
            word = message.split("invalid choice: ", 1)[1].split("'")[1] if "'" in message else ""
            choices = message.rsplit("(choose from ", 1)[-1].rstrip(")").replace("'", "").split(", ")
            message += did_you_mean(word, choices)
        super().error(message)


def add_version(parser: argparse.ArgumentParser) -> None:
    """`--version`: the suite's version, git commit and the runtimes' versions, then exit 0."""
    parser.add_argument(
        "--version",
        action=_Version,
        nargs=0,
        help="print the suite's version, git commit and runtime versions, then exit",
    )


class _Version(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        from common.record.envinfo import version_text  # only when asked: it reads package metadata and git

        print(version_text())  # stdout, as `--version` of other tools (parser.exit would write to stderr)
        parser.exit(0)
