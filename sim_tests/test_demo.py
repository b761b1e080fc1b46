"""`make demo` as a user runs it: the bundled model on the simulated accelerator (`sim` preset).

The `sim` preset has the decoder engine and the bundled model fits it, so the demo runs in decoder
mode: the device runs every layer, and the logits are those of the integer reference
(`--backend int`). The demo samples with a fixed seed, so its text on the Verilated gateware must
be exactly the text `--backend int` produces; any value of any layer that differed would change it.
"""
from bitlane import demo


def test_demo_on_sim_prints_the_same_text_as_the_integer_reference(capsys):
    assert demo.bundled_model().name == "bitnet-kjv-h128", "the demo runs the small KJV model"
    assert demo.main(["--backend", "int"]) == 0
    on_int = capsys.readouterr().out
    assert demo.main([]) == 0  # the default: backend sim, preset sim
    captured = capsys.readouterr()
    assert "backend sim" in captured.err and "sim://sim: decoder mode" in captured.err
    assert captured.out == on_int
    assert len(on_int.split()) > 20  # real text came out, not an empty continuation
