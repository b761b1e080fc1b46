"""`bitlane hw ...`: the hardware tools.

    bitlane hw verilog --preset tiny [-o bitlane_top.v]    Verilog of the top level
    bitlane hw synth --preset icebreaker [...]              resources and fmax (hw/synth.py)
    bitlane hw build --board icebreaker [...]               bitstream and report (hw/build.py)
    bitlane hw program --board icebreaker [...]             load a built bitstream (hw/build.py)
    bitlane hw sweep --board ulx3s --seeds 1-8 [...]         which nextpnr seeds route, and how fast (hw/sweep.py)
"""
import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

from bitlane.contract.config import PRESETS, preset

from .verilog import TOP_NAME, top_verilog

# Subcommands whose own parser lives elsewhere: name -> (module, whether its main() wants the name too)
DELEGATED = {
    "synth": (".synth", False, "synthesize, place and route the compute core: resources and fmax per preset"),
    "build": (".build", True, "build a board's bitstream (synthesis, place and route, report)"),
    "program": (".build", True, "load a built bitstream into a connected board"),
    "sweep": (".sweep", False, "place and route a board top from several nextpnr seeds at once"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bitlane hw", description="bitlane's hardware tools.",
        epilog="Run `bitlane hw COMMAND --help` for a command's options.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    verilog = commands.add_parser(
        "verilog", help="write the Verilog of the top level (command processor + compute core)",
        description="Write the Verilog of BitlaneTop for a preset. The top module has the ports clk, rst, "
                    "rx__payload[7:0], rx__valid, rx__ready (host -> device bytes), "
                    "tx__payload[7:0], tx__valid, tx__ready (device -> host bytes); a preset with SDRAM (ulx3s) adds "
                    "sdram_clk, sdram_rst and the SDRAM pins sdram__* (see hw/top.py).")
    verilog.add_argument("--preset", required=True, choices=list(PRESETS), help="accelerator configuration (contract/config.py)")
    verilog.add_argument("-o", "--output", type=Path, help="file to write (default: standard output)")
    verilog.add_argument("--name", default=TOP_NAME, help=f"top module name (default: {TOP_NAME})")
    for name, (_, _, help_text) in DELEGATED.items():
        commands.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED:
        module, wants_name, _ = DELEGATED[argv[0]]
        try:
            tool = importlib.import_module(module, __package__)
        except ImportError as exc:
            print(f"bitlane hw {argv[0]}: not available ({exc})", file=sys.stderr)
            return 1
        return tool.main(argv if wants_name else argv[1:])

    args = build_parser().parse_args(argv)
    text = top_verilog(preset(args.preset), name=args.name)
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text)
        print(f"wrote {args.output} (module {args.name}, preset {args.preset})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
