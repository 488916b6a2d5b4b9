"""Retake docs/web-page.png, the README's screenshot: the creator page captioning a held-out
picture (training/heldout_scenes.py's vector set, drawn by other code than the demo model's
generator), in the real browser the web tests use.

    make serve &                                     # or any running service
    python docs/readme_screenshot.py [--url http://127.0.0.1:3000] [--scene 0]

It prints the answer it shows, so the README text can quote it; pick a --scene the model reads
right (`snap2caption evaluate-demo` says how often it does).
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:3000", help="the running service")
    ap.add_argument("--scene", type=int, default=0, help="index into the held-out vector set")
    ap.add_argument("--tone", default="funny")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "web-page.png")
    args = ap.parse_args()

    from training.heldout_scenes import heldout_set

    scene = heldout_set("vector", args.scene + 1)[args.scene]
    node_dir = (
        subprocess.run(["bash", str(REPO / "infra" / "install_browser.sh")], check=True, capture_output=True, text=True)
        .stdout.strip()
        .splitlines()[-1]
    )
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / f"{scene.color}-{scene.shape}.png"
        scene.image.save(image)
        config = {
            "scenario": "tone",
            "baseUrl": args.url,
            "nodeDir": node_dir,
            "chromium": "/usr/bin/chromium",
            "artifacts": tmp,
            "image": str(image),
            "tones": [args.tone],
        }
        proc = subprocess.run(
            ["node", str(REPO / "tests" / "web" / "scenarios.mjs"), json.dumps(config)],
            capture_output=True,
            text=True,
            cwd=REPO,
        )
        if proc.returncode != 0:
            sys.exit(f"browser scenario failed:\n{proc.stderr[-4000:]}")
        shutil.copy(Path(tmp) / f"web-tone-{args.tone}.png", args.out)
    shown = json.loads(proc.stdout.strip().splitlines()[-1])["captions"][args.tone]
    print(json.dumps({"scene": f"{scene.color} {scene.shape} on {scene.background}", **shown}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
