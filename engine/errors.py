"""Errors the engine raises for bad user input (config, checkpoint, plan). No nanotune import."""


class EngineConfigError(ValueError):
    """A configuration, checkpoint or plan the user gave is invalid; the message names what and where."""


def read_json(path, missing: str = "no such file"):
    """Parse a JSON file the user named; errors are one line naming the file (and line for bad JSON)."""
    import json
    from pathlib import Path

    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise EngineConfigError(f"{path}: {missing}") from None
    except json.JSONDecodeError as e:
        raise EngineConfigError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
