"""`digestd dkim keygen`: a new DKIM key, the DNS record to publish and the settings to add."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from digestd.cli.exitcodes import EXIT_CONFIG, EXIT_OK, EXIT_RUNTIME
from digestd.cli.options import Command, config_path, global_options, subparser
from digestd.config.sections import DkimSettings
from digestd.config.settings import load_settings
from digestd.mail.dkim import dkim_dns_record, generate_dkim_key, write_private_key

__all__ = ["KEYGEN", "add_parser", "cmd_dkim_keygen"]

KEYGEN = Command(
    "dkim keygen",
    "make a DKIM key and print the DNS record to publish",
    "Write a new RSA private key (2048 bits unless --bits; mode 0600; an existing file "
    "is never overwritten) and print the TXT record to publish and the settings to add.",
    "digestd dkim keygen --selector digest2026 --domain example.org --out dkim.pem",
)


def add_parser(sub: Any) -> None:
    dkim = sub.add_parser(
        "dkim",
        help="DKIM keys: `digestd dkim keygen`",
        description="DKIM keys for signing the mail digestd sends.",
        epilog=f"example:\n  {KEYGEN.example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    global_options(dkim, defaults=False)
    action = dkim.add_subparsers(dest="dkim_command", required=True, metavar="ACTION")
    keygen = subparser(action, KEYGEN, name="keygen")
    keygen.prog = "digestd dkim keygen"
    keygen.add_argument("--selector", required=True, help="the DNS label, e.g. digest2026")
    keygen.add_argument(
        "--domain", help="the signing domain (default: the domain of delivery.from)"
    )
    keygen.add_argument(
        "--out", type=Path, help="the key file (default: SELECTOR.dkim.pem beside the settings)"
    )
    keygen.add_argument("--bits", type=int, default=2048, choices=[1024, 2048, 3072, 4096])


def cmd_dkim_keygen(args: argparse.Namespace) -> int:
    """Needs the settings only for the default domain and key file: it runs before they load."""
    domain = args.domain
    if domain is None:
        domain = load_settings(config_path(args.config)).delivery.envelope_from.rpartition("@")[2]
    out = args.out or config_path(args.config).parent / f"{args.selector}.dkim.pem"
    try:
        config = DkimSettings(selector=args.selector, domain=domain, key_file=out)
    except ValidationError as exc:
        reasons = "; ".join(f"--{e['loc'][0]}: {e['msg']}" for e in exc.errors())
        print(f"digestd: {reasons}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        write_private_key(out, generate_dkim_key(args.bits))
    except FileExistsError:
        print(f"digestd: {out} exists; it is never overwritten (choose --out)", file=sys.stderr)
        return EXIT_RUNTIME
    print(
        f"private key written to {out} (mode 0600: only its owner, who must run digestd, reads it)"
    )
    print("publish this DNS record:")
    print(f"  {dkim_dns_record(config)}")
    print("then add to digestd.yaml under delivery:")
    print(f"  dkim: {{selector: {config.selector}, domain: {config.domain}, key_file: {out}}}")
    return EXIT_OK
