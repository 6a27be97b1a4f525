"""The report as one page: a tiny `pat-reproduce` leaves `report/index.html` and a README that links every file in the page's order;
headless Chromium loads the page, shows every image and finds every file it links; the committed study's page is what its files build."""
import json, os, re, shutil, signal, subprocess, sys, tempfile, time, urllib.request
from fnmatch import fnmatch
from pathlib import Path
import pandas as pd
import pytest
from pat_nbdev.page import PAGE_FILES, page_links, write_report_page, write_study_page

REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "reports" / "cpu-study"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")

@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    "A `pat-reproduce --preset tiny` output folder (4 runs, the report, its page)."
    out = tmp_path_factory.mktemp("tiny") / "out"
    code = "import sys; from pat_nbdev.reproduce import main; sys.exit(main(sys.argv[1:]))"
    p = subprocess.run([sys.executable, "-c", code, "--preset", "tiny", "--engine", "inprocess", "--jobs", "1", "--skip", "theory", "bench",
                        "--out", str(out)], capture_output=True, text=True, timeout=900,
                       env={**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"})  # as `make` sets it: figures must still reach the page
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    return out

def test_readme_links_every_file_in_the_pages_order(tiny):
    report = tiny / "report"
    html, readme = (report / "index.html").read_text(), (report / "README.md").read_text()
    links = [h for _, h in page_links(html)]
    assert links and all((report / h).is_file() for h in links)  # no broken link
    assert set(links) == {p.name for p in report.iterdir()} - {"index.html", "README.md"}  # every file is on the page
    listed = [line.split("](")[0] for line in readme.split("[")[1:]]  # link texts in the README's order
    assert listed == ["index.html", *links] and "Not on the page" not in readme
    assert readme.splitlines()[2].startswith("**Data and training.** TINY SYNTHETIC")  # the provenance line under the title
    assert html.index("Data and training") < html.index("<h2")  # ... and on top of the page
    assert str(tiny) not in html + readme  # no path of this machine

def test_page_sections_show_their_files(tiny):
    "Each file the executed page links is under the section `PAGE_FILES` (which builds a study's page) gives it."
    for section, href in page_links((tiny / "report" / "index.html").read_text()):
        shown = href[:-4] + ".md" if href.endswith(".csv") and (tiny / "report" / (href[:-4] + ".md")).exists() else href
        assert any(fnmatch(shown, p) for p in PAGE_FILES[section]), (section, href)

def test_runs_csv_paths_are_relative_to_the_study(tiny):
    runs = pd.read_csv(tiny / "report" / "runs.csv")
    assert not any(Path(p).is_absolute() for p in runs.run_dir)
    assert all((tiny / p / "metrics.json").is_file() for p in runs.run_dir)
    committed = pd.read_csv(STUDY / "runs.csv")
    assert all(p.startswith("runs/") for p in committed.run_dir), committed.run_dir[:3].tolist()

def test_committed_study_page_is_what_its_files_build(tmp_path):
    copy = shutil.copytree(STUDY, tmp_path / "study")
    write_study_page(copy)
    for name in ("index.html", "README.md"):
        assert (copy / name).read_text() == (STUDY / name).read_text(), f"reports/cpu-study/{name} is stale: run write_study_page on it"

def browse(page:Path) -> dict:
    "Load `page` in headless Chromium over the DevTools protocol; what the loaded page holds, and the exceptions it threw."
    websocket = pytest.importorskip("websocket", reason="websocket-client is missing: the DevTools protocol needs it")
    with tempfile.TemporaryDirectory() as profile:
        args = ["--headless", "--disable-gpu", "--no-sandbox", "--remote-debugging-port=0", "--remote-allow-origins=*",
                f"--user-data-dir={profile}", "about:blank"]
        proc = subprocess.Popen([CHROMIUM, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            port_file, deadline, targets = Path(profile) / "DevToolsActivePort", time.time() + 30, []
            while not targets:
                assert time.time() < deadline and proc.poll() is None, "Chromium did not start its DevTools endpoint"
                if port_file.exists() and port_file.read_text().strip():
                    url = f"http://127.0.0.1:{port_file.read_text().split()[0]}/json/list"
                    targets = [t for t in json.load(urllib.request.urlopen(url)) if t["type"] == "page"]
                time.sleep(0.1)
            ws = websocket.create_connection(targets[0]["webSocketDebuggerUrl"], timeout=30, suppress_origin=True)
            for i, method in enumerate(("Page.enable", "Runtime.enable")): ws.send(json.dumps(dict(id=i, method=method)))
            ws.send(json.dumps(dict(id=10, method="Emulation.setDeviceMetricsOverride",  # a laptop's window: 1280 px wide
                                    params=dict(width=1280, height=900, deviceScaleFactor=1, mobile=False))))
            ws.send(json.dumps(dict(id=2, method="Page.navigate", params=dict(url=page.as_uri()))))
            exceptions = []
            while (m := json.loads(ws.recv())).get("method") != "Page.loadEventFired":
                if m.get("method") == "Runtime.exceptionThrown": exceptions.append(m["params"]["exceptionDetails"]["text"])
            js = """JSON.stringify({title: document.title, ready: document.readyState, scroll_width: document.documentElement.scrollWidth,
                text: document.body.innerText,
                images: [...document.images].map(i => ({src: i.getAttribute('src').slice(0, 80), width: i.naturalWidth, alt: i.alt})),
                refs: [...document.querySelectorAll('a[href]')].map(a => a.getAttribute('href'))
                      .concat([...document.querySelectorAll('[src]')].map(e => e.getAttribute('src')))})"""
            ws.send(json.dumps(dict(id=3, method="Runtime.evaluate", params=dict(expression=js, returnByValue=True))))
            while (m := json.loads(ws.recv())).get("id") != 3: pass
            ws.close()
            return {**json.loads(m["result"]["result"]["value"]), "exceptions": exceptions}
        finally:
            os.killpg(proc.pid, signal.SIGTERM); proc.wait(10)

@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium: apt-get install -y --no-install-recommends chromium")
@pytest.mark.parametrize("which", ["tiny", "cpu-study"])
def test_page_in_a_browser(which, request):
    "The page loads, every image renders (natural width > 0), every relative link and source is a file beside the page."
    page = (request.getfixturevalue("tiny") / "report" if which == "tiny" else STUDY) / "index.html"
    seen = browse(page)
    assert seen["ready"] == "complete" and seen["title"].startswith(("Report", "A seeded CPU study")) and not seen["exceptions"], seen
    assert len(seen["images"]) >= 5 and all(i["width"] > 0 for i in seen["images"]), [i for i in seen["images"] if i["width"] == 0]
    relative = [r for r in seen["refs"] if not r.startswith(("#", "data:", "http:", "https:"))]
    assert relative and [r for r in relative if not (page.parent / urllib.request.url2pathname(r)).is_file()] == []

@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium: apt-get install -y --no-install-recommends chromium")
def test_study_page_as_a_reader_sees_it():
    "The CamVid study's page at 1280 px: nothing wider than the window, the forest plot first, an alt text of its own on every image."
    page = Path(__file__).resolve().parents[1] / "reports" / "camvid-study" / "report" / "index.html"
    seen = browse(page)
    assert seen["scroll_width"] <= 1280, seen["scroll_width"]
    alts = [i["alt"] for i in seen["images"]]
    assert alts and alts[0].startswith("Forest plot of the answer"), alts[:2]
    assert all(a and "No description" not in a for a in alts) and len(set(alts)) == len(alts), alts
    assert not re.search(r"^No Fig\.|nothing to show|bench_dir", seen["text"], re.M), "a section says it has nothing to show"

@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium: apt-get install -y --no-install-recommends chromium")
def test_older_study_page_fits_and_describes_its_images():
    "The cpu-study's page (a study made before forest plots; its page built from its files) at 1280 px: nothing wider, an alt text of its own on every image."
    seen = browse(STUDY / "index.html")
    alts = [i["alt"] for i in seen["images"]]
    assert seen["scroll_width"] <= 1280, seen["scroll_width"]
    assert alts and all(a and "No description" not in a for a in alts) and len(set(alts)) == len(alts), alts
