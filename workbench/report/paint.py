"""Time to first paint of a report in headless Chromium, side by side with the same page laid out
the old way (plotly.js in ``<head>``, every figure drawn before anything shows).

    python -m workbench.report.paint report.html [--loads 5]

Prints the median first-contentful-paint of ``--loads`` fresh loads of each layout, and their
ratio. Needs Debian's ``chromium`` and ``chromium-driver`` and ``selenium`` (the dev extras).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from pathlib import Path

FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
         "--window-size=1280,900")
FCP = ("return (performance.getEntriesByName('first-contentful-paint')[0] || {}).startTime || null")


def blocking_copy(text: str) -> str:
    """The same report with plotly.js executed in ``<head>`` and every figure drawn at once (how
    reports were laid out before: nothing paints until all of it has run)."""
    start = text.index('<script type="text/plain" id="wb-plotly">')
    end = text.index("</script>", start) + len("</script>")
    bundle = text[start + len('<script type="text/plain" id="wb-plotly">'):end - len("</script>")]
    text = text[:start] + text[end:]
    eager = ("<script>document.addEventListener('DOMContentLoaded',function(){"
             "document.querySelectorAll('div.wb-figure').forEach(function(t){"
             "var s=document.querySelector('script.wb-figure-data[data-target=\"'+t.id+'\"]');"
             "var f=JSON.parse(s.textContent);Plotly.newPlot(t,f.data,f.layout||{});});});</script>")
    body_script = text.index("<script>", text.index("<main>"))
    text = text[:body_script] + eager + text[text.index("</script>", body_script) + len("</script>"):]
    return text.replace("</style></head>", f"</style><script>{bundle}</script></head>", 1)


def measure(path: Path, loads: int) -> list[float]:
    """First-contentful-paint (ms) of ``loads`` loads, each in a fresh headless Chromium profile."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    times = []
    for _ in range(loads):
        folder = tempfile.mkdtemp(prefix="wb-paint-")
        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for flag in FLAGS + (f"--user-data-dir={folder}",):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        try:
            driver.get("about:blank")
            driver.get(path.resolve().as_uri())
            value = None
            for _ in range(200):
                value = driver.execute_script(FCP)
                if value:
                    break
            times.append(float(value))
        finally:
            driver.quit()
            shutil.rmtree(folder, ignore_errors=True)
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("--loads", type=int, default=5)
    args = parser.parse_args(argv)
    old = args.report.with_name(args.report.stem + ".blocking.html")
    old.write_text(blocking_copy(args.report.read_text(encoding="utf-8")), encoding="utf-8")
    rows = {}
    for label, path in (("report (plotly.js after first paint, figures lazily)", args.report),
                        ("same page, plotly.js in <head>, every figure drawn first", old)):
        times = measure(path, args.loads)
        rows[label] = statistics.median(times)
        print(f"{label}: first contentful paint median {rows[label]:.0f} ms over {args.loads} loads "
              f"({', '.join(f'{t:.0f}' for t in times)})")
    new, blocking = rows.values()
    print(f"ratio blocking / report: {blocking / new:.1f}x; {args.report.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
