"""The command line every stage shares, for running a stage by hand while debugging:

    python -m components.<stage> --config stage.yaml [--set key=value ...]
    python -m components.<stage> --help                  # every Config field: type, default, help
    python -m components.<stage> --config stage.yaml --print-config   # the resolved Config, then exit

`--set` takes dotted keys and YAML values (`--set lora.r=8 --set method=full`). The stage's code (torch,
clients) is imported only once the command line is parsed, so `--help` answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import json
from dataclasses import asdict, is_dataclass
from typing import Any

import yaml

from components.common.config import load_config, set_dotted, to_dict
from components.common.config_help import format_fields
from components.common.errors import ConfigError, InputError, StageStopped
from components.common.logs import print_error, setup_logging
from components.common.plain_yaml import load_plain_yaml


def parse_assignments(assignments: list[str]) -> dict[str, Any]:
    """Turn ['a.b=1', 'c=x'] into {'a': {'b': 1}, 'c': 'x'}."""
    overrides: dict[str, Any] = {}
    for item in assignments:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value")
        if not raw.strip():
            raise ConfigError(f"--set {key}: empty value; give one (`--set {key}=null` for none)")
        set_dotted(overrides, key, load_plain_yaml(raw, f"--set {key}"))
    return overrides


def run_stage_cli(stage: str, config_class: type, run: str, argv: list[str] | None = None) -> None:
    """The stage's command line; `run` is the "module:function" that runs a Config, imported after parsing."""
    parser = argparse.ArgumentParser(
        prog=f"python -m components.{stage}",
        description=f"Run the {stage} stage.",
        epilog=f"Config fields (YAML keys; --set takes the dotted name):\n{format_fields(config_class)}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", required=True, help="YAML file with the stage's Config fields")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field")
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved Config as YAML and exit"
    )
    args = parser.parse_args(argv)
    setup_logging()
    try:
        config = load_config(config_class, args.config, parse_assignments(args.set))
        if args.print_config:
            print(yaml.safe_dump(to_dict(config), sort_keys=False), end="")
            return
        module, _, function = run.partition(":")
        result = getattr(importlib.import_module(module), function)(config)
    except (ConfigError, InputError) as error:
        print_error(str(error))
        raise SystemExit(2) from None
    except StageStopped as error:
        print_error(str(error))
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        print_error("interrupted (Ctrl-C)")
        raise SystemExit(130) from None
    print(json.dumps(asdict(result) if is_dataclass(result) else result, indent=2, default=str))
