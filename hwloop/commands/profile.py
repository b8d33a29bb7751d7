"""Device profiles: ``hwloop profile validate FILE...`` checks profiles against the schema;
``hwloop profile schema`` prints the JSON Schema (for editors); ``hwloop profile list`` names the shipped ones.

Noise strengths in a profile are variances D (D_A additive, in output units^2;
D_M multiplicative, relative), not standard deviations: Walking Noise's sigma
(``hwloop walk``) is a standard deviation, with sigma^2 = D.
"""

from __future__ import annotations

import argparse
import sys

HELP = "validate device profiles, print their JSON Schema, list the known ones"


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True
    v = sub.add_parser("validate", help="check profile files (or bare names); exit 2 at the first invalid one")
    v.add_argument("files", nargs="+", metavar="FILE")
    sub.add_parser("schema", help="print the profile JSON Schema")
    sub.add_parser("list", help="list profiles found by bare name")


def main(args: argparse.Namespace) -> int:
    from ..profiles import available_profiles, load_profile, schema_json

    if args.action == "schema":
        sys.stdout.write(schema_json())
    elif args.action == "list":
        for name in available_profiles():
            p = load_profile(name)
            print(f"{name:<12} v{p.version:<6} {p.path}  {p.data.get('description', '')}")
    else:
        for f in args.files:
            p = load_profile(f)
            print(f"{p.path}: ok ({p.name} v{p.version}, sha256 {p.sha256[:12]})")
    return 0
