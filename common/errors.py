"""The suite's own errors and the exit codes they map to (documented in README.md)."""

EXIT_PASS = 0  # every target held
EXIT_TARGET_FAILED = 1  # the run completed but a target (or an output sanity check) failed
EXIT_BAD_INPUT = 2  # bad input or configuration: nothing was measured
EXIT_RUNTIME = 3  # the backend or runtime failed while running
EXIT_INCOMPLETE = 4  # a merge of image shards lacks a shard (docs/scale-out.md)
EXIT_INTERRUPTED = 130  # Ctrl-C / SIGTERM


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (or its type name): runtimes' messages run to pages."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def quote(value, limit: int = 200) -> str:
    """repr(value) for a message, at most `limit` characters. reprlib stops at a few levels and items, so the
    cost is bounded too: a YAML alias bomb's repr would be gigabytes."""
    import reprlib

    r = reprlib.Repr()
    r.maxlevel, r.maxlist, r.maxdict, r.maxtuple, r.maxset = 3, 8, 8, 8, 8
    r.maxstring = r.maxother = r.maxlong = limit
    text = r.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def did_you_mean(word: str, known, n: int = 3) -> str:
    """' (did you mean X?)' naming the closest of `known` to a mistyped `word`, or '' when none is close."""
    import difflib

    close = difflib.get_close_matches(word, list(known), n=n, cutoff=0.6)
    return f" (did you mean {' or '.join(close)}?)" if close else ""


class SuiteError(Exception):
    """An error the suite reports as one clear line, never as a traceback."""

    exit_code = EXIT_RUNTIME

    def __init__(self, message: str, path=None):
        self.path = str(path) if path is not None else None
        super().__init__(f"{self.path}: {message}" if self.path else message)


class InputError(SuiteError):
    """Bad input data (dataset, annotation file, model file)."""

    exit_code = EXIT_BAD_INPUT


class ConfigError(InputError):
    """Bad configuration (spec file, command-line flags, environment)."""


class BackendUnavailable(ConfigError):
    """The requested backend cannot run on this machine; the message says why."""


class RuntimeFailure(SuiteError):
    """The runtime failed while building or running an engine."""

    exit_code = EXIT_RUNTIME


class IncompleteError(SuiteError):
    """A merge of image shards that lacks one or more shards; the message names them."""

    exit_code = EXIT_INCOMPLETE
