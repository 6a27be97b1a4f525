"""Write README.md from nbs/index.ipynb (quarto, which nbdev_readme needs, cannot be installed here).

Markdown cells are copied; code cells become ```python blocks; outputs and cells tagged `hide` are left out.
"""
from pathlib import Path
import json, re

REPO = Path(__file__).resolve().parents[1]
HEADER = "<!-- Generated from nbs/index.ipynb by scripts/make_readme.py: edit the notebook, then `make readme`. -->\n\n"

def _src(cell): return ''.join(cell['source']) if isinstance(cell['source'], list) else cell['source']

def notebook_to_markdown(nb_path: Path) -> str:
    cells = json.loads(nb_path.read_text(encoding='utf-8'))['cells']
    parts = []
    for cell in cells:
        src = _src(cell).strip()
        if not src or re.search(r'^#\|\s*(hide|export)', src, re.M): continue
        if cell['cell_type'] == 'markdown': parts.append(src)
        elif cell['cell_type'] == 'code': parts.append(f"```python\n{src}\n```")
    return HEADER + '\n\n'.join(parts) + '\n'

if __name__ == '__main__':
    (REPO / 'README.md').write_text(notebook_to_markdown(REPO / 'nbs' / 'index.ipynb'), encoding='utf-8')
