"""dsm.plumbing.plots: the one place that picks the backend and the resolution of dsm's figures."""

from dsm.plumbing.plots import DPI, pyplot, save_figure


def test_a_figure_is_written_as_png_at_the_one_resolution_and_closed(tmp_path):
    from PIL import Image

    plt = pyplot()
    assert plt.get_backend().lower() == "agg"  # draws without a display
    fig, ax = plt.subplots(figsize=(2, 1))
    ax.plot([0, 1], [1, 0])
    path = save_figure(fig, tmp_path / "made" / "here.png")
    assert path == tmp_path / "made" / "here.png"
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (2 * DPI, 1 * DPI)
    assert fig.number not in plt.get_fignums()  # closed: a long job drawing many figures does not leak
