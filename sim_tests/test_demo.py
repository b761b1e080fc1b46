"""`make demo` as a user runs it: the bundled model on the simulated accelerator (`sim` preset).

The demo samples with a fixed seed, so its text on the Verilated gateware must be exactly the
text the golden CPU reference produces; any accumulator that differed would change the logits.
"""
from bitlane import demo


def test_demo_on_sim_prints_the_same_text_as_golden(capsys):
    assert demo.bundled_model().name == "bitnet-kjv-h128", "the demo runs the small KJV model"
    assert demo.main(["--backend", "golden"]) == 0
    on_golden = capsys.readouterr().out
    assert demo.main([]) == 0  # the default: backend sim, preset sim
    captured = capsys.readouterr()
    assert "backend sim" in captured.err and "layers resident" in captured.err
    assert captured.out == on_golden
    assert len(on_golden.split()) > 20  # real text came out, not an empty continuation
