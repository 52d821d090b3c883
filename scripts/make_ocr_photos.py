"""Generate the bundled photo-like OCR set: scenes with rendered Chinese and Latin text lines, labelled by quads.

    python scripts/make_ocr_photos.py [--out src/edgeslim/data/ocr_photos] [--count 24] [--seed 9]

Each image is a textured background (gradients, blurred shapes, noise) with 3-7 text lines in several fonts,
colours and sizes, each line turned by a small angle; then the whole image gets a mild perspective warp, blur and
JPEG compression, like a phone photo of a sign. The quads follow every transform. Output:
`images/*.jpg`, `labels.tsv` (`image<TAB>x1,y1,...,x4,y4<TAB>ignore<TAB>text`, the format of the real evaluation
photos' lines.tsv) and `split.json` (calibration and evaluation halves). This set is what `ocr-det` / `ocr-cls`
calibrate and tune on; real photos are kept for evaluation.

Fonts are found on the system (fc-list, then the usual Debian folders): install a CJK font first, e.g.
`apt-get install fonts-wqy-zenhei` (or fonts-noto-cjk). No font is shipped.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

ZH_WORDS = ("欢迎光临 营业时间 停车场 出口 入口 餐厅 咖啡 超市 药店 银行 酒店 面馆 火锅 烧烤 水果 蔬菜 "
            "便利店 电话 地址 优惠 新品上市 全场八折 特价 小心地滑 禁止吸烟 请勿停车 安全出口 洗手间 "
            "北京路 人民广场 中山公园 地铁站 公交车站 学校 医院 图书馆 书店 花店 面包 牛肉面 饺子 "
            "奶茶 冰淇淋 外卖 营业中 开业大吉 手机维修 眼镜 服装 鞋店 美发 五金 文具 快递 广场 "
            "东门 西门 南路 北街 一楼 二楼 三号 八号 欢迎再来 谢谢惠顾").split()
EN_WORDS = ("OPEN EXIT SALE Coffee Hotel Bakery Pizza PARKING Station Market Pharmacy BANK Welcome Street "
            "Avenue Museum Library CAUTION STOP Taxi Airport Fresh Garden Tea Noodles Books Flowers Lobby "
            "Gate Floor Open 24 hours Free WiFi Menu Delivery Center Plaza North South East West").split()


def find_fonts() -> dict[str, list[str]]:
    """{"cjk": [...], "latin": [...]} font files present on this system."""
    files: list[str] = []
    if shutil.which("fc-list"):
        out = subprocess.run(["fc-list", "--format", "%{file}\n"], capture_output=True, text=True).stdout
        files = [f for f in out.splitlines() if f.endswith((".ttf", ".ttc", ".otf"))]
    for d in ("/usr/share/fonts", "/usr/local/share/fonts"):
        if Path(d).is_dir():
            files += [str(p) for p in Path(d).rglob("*") if p.suffix.lower() in (".ttf", ".ttc", ".otf")]
    files = sorted(set(files))
    cjk = [f for f in files if any(k in f.lower() for k in ("wqy", "cjk", "zenhei", "microhei", "droidsansfallback"))]
    latin = [f for f in files if "dejavu" in f.lower() and "mono" not in f.lower()] + cjk
    return {"cjk": cjk, "latin": latin}


def background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    import cv2

    c0, c1 = rng.uniform(30, 230, 3), rng.uniform(30, 230, 3)
    t = np.linspace(0, 1, w if rng.random() < 0.5 else h)
    grad = c0[None, :] * (1 - t[:, None]) + c1[None, :] * t[:, None]
    img = (np.broadcast_to(grad[None], (h, w, 3)) if len(t) == w else np.broadcast_to(grad[:, None], (h, w, 3))).copy()
    for _ in range(rng.integers(3, 9)):  # blurred blobs and panels: a scene, not a flat page
        color = rng.uniform(0, 255, 3).tolist()
        if rng.random() < 0.5:
            x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
            cv2.circle(img, (x, y), int(rng.integers(10, max(w, h) // 3)), color, -1)
        else:
            x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
            cv2.rectangle(img, (x0, y0), (x0 + int(rng.integers(20, w // 2)), y0 + int(rng.integers(20, h // 2))), color, -1)
    img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), float(rng.uniform(2, 8)))
    img += rng.normal(0, rng.uniform(2, 10), img.shape)
    return np.clip(img, 0, 255)


def render_line(rng, text: str, font_path: str, size: int, color, bg_color) -> tuple[np.ndarray, np.ndarray]:
    """An RGBA patch holding the text (optionally on a plate) and the text's quad in patch pixels."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(font_path, size)
    x0, y0, x1, y1 = font.getbbox(text)
    pad = int(size * 0.35)
    W, H = x1 - x0 + 2 * pad, y1 - y0 + 2 * pad
    patch = Image.new("RGBA", (W, H), (0, 0, 0, 0))
    d = ImageDraw.Draw(patch)
    if bg_color is not None:
        d.rectangle([0, 0, W - 1, H - 1], fill=tuple(int(c) for c in bg_color) + (235,))
    d.text((pad - x0, pad - y0), text, font=font, fill=tuple(int(c) for c in color) + (255,))
    quad = np.array([[pad, pad], [W - pad, pad], [W - pad, H - pad], [pad, H - pad]], np.float32)
    return np.asarray(patch), quad


def make_text(rng) -> str:
    kind = rng.random()
    if kind < 0.45:
        return "".join(rng.choice(ZH_WORDS, size=int(rng.integers(1, 3))))
    if kind < 0.8:
        return " ".join(rng.choice(EN_WORDS, size=int(rng.integers(1, 3))))
    if kind < 0.9:
        return f"{rng.integers(100, 999)}-{rng.integers(1000, 9999)}"
    return str(rng.choice(ZH_WORDS)) + str(rng.integers(1, 99))


def make_photo(rng, fonts: dict[str, list[str]], max_side: int = 640):
    import cv2

    w = int(rng.integers(480, 720))
    h = int(rng.integers(360, 560))
    img = background(rng, h, w)
    occupied = np.zeros((h, w), bool)
    labels = []
    for _ in range(int(rng.integers(3, 8))):
        text = make_text(rng)
        cjk = any(ord(c) > 0x2E80 for c in text)
        font = str(rng.choice(fonts["cjk"] if cjk or not fonts["latin"] else fonts["latin"]))
        size = int(rng.integers(18, 46))
        bright = rng.random() < 0.5
        color = rng.uniform(200, 255, 3) if bright else rng.uniform(0, 60, 3)
        plate = (rng.uniform(0, 70, 3) if bright else rng.uniform(190, 255, 3)) if rng.random() < 0.6 else None
        patch, quad = render_line(rng, text, font, size, color, plate)
        ph, pw = patch.shape[:2]
        if pw >= w - 10 or ph >= h - 10:
            continue
        angle = float(rng.uniform(-12, 12)) if rng.random() < 0.6 else 0.0
        m = cv2.getRotationMatrix2D((pw / 2, ph / 2), angle, 1.0)
        cos, sin = abs(m[0, 0]), abs(m[0, 1])
        nw, nh = int(pw * cos + ph * sin) + 2, int(pw * sin + ph * cos) + 2
        m[0, 2] += nw / 2 - pw / 2
        m[1, 2] += nh / 2 - ph / 2
        if nw >= w or nh >= h:
            continue
        rot = cv2.warpAffine(patch, m, (nw, nh), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0, 0))
        q = np.hstack([quad, np.ones((4, 1), np.float32)]) @ m.T
        for _try in range(30):  # place without overlapping earlier lines
            x, y = int(rng.integers(0, w - nw)), int(rng.integers(0, h - nh))
            if not occupied[y : y + nh, x : x + nw].any():
                break
        else:
            continue
        occupied[max(0, y - 4) : y + nh + 4, max(0, x - 4) : x + nw + 4] = True
        alpha = rot[:, :, 3:4].astype(np.float32) / 255.0
        region = img[y : y + nh, x : x + nw]
        region[:] = region * (1 - alpha) + rot[:, :, 2::-1].astype(np.float32) * alpha  # RGBA -> BGR
        labels.append((q + [x, y], text))
    # a mild perspective: the photo was not taken head-on
    d = 0.06
    src = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)
    dst = src + rng.uniform(-d, d, (4, 2)).astype(np.float32) * [w, h]
    dst = (dst - dst.min(axis=0)).astype(np.float32)
    out_w, out_h = int(dst[:, 0].max()), int(dst[:, 1].max())
    pm = cv2.getPerspectiveTransform(src, dst)
    img = cv2.warpPerspective(img, pm, (out_w, out_h), borderMode=cv2.BORDER_REPLICATE)
    labels = [(cv2.perspectiveTransform(q.reshape(-1, 1, 2).astype(np.float32), pm).reshape(4, 2), t) for q, t in labels]
    s = min(1.0, max_side / max(out_w, out_h))
    if s < 1.0:
        img = cv2.resize(img, (int(out_w * s), int(out_h * s)), interpolation=cv2.INTER_AREA)
        labels = [(q * s, t) for q, t in labels]
    if rng.random() < 0.5:
        img = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(0.4, 1.1)))
    img = np.clip(img, 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(60, 92))])
    return buf.tobytes(), labels


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "src/edgeslim/data/ocr_photos"))
    ap.add_argument("--count", type=int, default=24)
    ap.add_argument("--seed", type=int, default=9)
    a = ap.parse_args(argv)
    import cv2

    fonts = find_fonts()
    if not fonts["cjk"]:
        sys.stderr.write("no CJK font found. Install one: apt-get install fonts-wqy-zenhei (or fonts-noto-cjk)\n")
        return 2
    out = Path(a.out)
    if out.exists():
        shutil.rmtree(out)
    (out / "images").mkdir(parents=True)
    rng = np.random.default_rng(a.seed)
    rows, names = ["image\tquad_x1y1..x4y4\tignore\ttranscription"], []
    for i in range(a.count):
        data, labels = make_photo(rng, fonts)
        name = f"photo_{i:03d}.jpg"
        (out / "images" / name).write_bytes(data)
        names.append(name)
        h, w = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).shape[:2]
        for q, t in labels:
            # a line pushed partly out of the frame by the warp is marked "do not care", as ICDAR does
            inside = (q[:, 0] >= 0).all() and (q[:, 0] <= w).all() and (q[:, 1] >= 0).all() and (q[:, 1] <= h).all()
            rows.append(f"{name}\t{','.join(str(int(round(v))) for v in q.reshape(-1))}\t{0 if inside else 1}\t{t}")
    (out / "labels.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    half = a.count // 2
    (out / "split.json").write_text(json.dumps({"calib": names[:half], "eval": names[half:]}, indent=1))
    (out / "README.md").write_text(
        "# Bundled photo-like OCR set\n\nGenerated by `scripts/make_ocr_photos.py --count "
        f"{a.count} --seed {a.seed}` with the fonts {sorted({Path(f).name for f in fonts['cjk'][:1] + fonts['latin'][:1]})}: "
        "scenes with rendered Chinese and Latin lines, perspective, blur and JPEG. `labels.tsv`: "
        "`image<TAB>x1,y1,...,x4,y4<TAB>ignore<TAB>text` (corners clockwise from the text's top-left). `split.json`: "
        "calibration and evaluation halves. For calibration and tuning; real photos are for evaluation only.\n",
        encoding="utf-8")
    print(f"{out}: {a.count} images, {len(rows) - 1} lines")
    return 0


if __name__ == "__main__":
    sys.exit(main())
