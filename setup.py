"""Package metadata comes from settings.ini (nbdev 2.4 convention)."""
from configparser import ConfigParser
import setuptools, shlex, shutil
from pathlib import Path
from setuptools.command.build_py import build_py

config = ConfigParser(delimiters=['='])
config.read('settings.ini', encoding='utf-8')
cfg = config['DEFAULT']

licenses = {'apache2': ('Apache Software License 2.0', 'OSI Approved :: Apache Software License')}
statuses = ['1 - Planning', '2 - Pre-Alpha', '3 - Alpha', '4 - Beta', '5 - Production/Stable', '6 - Mature', '7 - Inactive']  # nbdev's list
py_versions = '3.10 3.11 3.12 3.13'.split()

requirements = shlex.split(cfg.get('requirements', ''))
dev_requirements = shlex.split(cfg.get('dev_requirements', ''))
lic = licenses[cfg['license']]
min_python = cfg['min_python']
lic_name, lic_classifier = lic

# What `pat-reproduce` executes or reads besides the modules: one source in the repository, copied into the wheel.
PACKAGED = {'notebooks': ['nbs/experiments/train_run.ipynb', 'nbs/experiments/report.ipynb', 'nbs/03_theory.ipynb'],
            'paper': sorted(str(p) for p in (Path(__file__).parent / 'data' / 'paper').glob('*.csv')),
            'manifests': sorted(str(p) for p in (Path(__file__).parent / 'data' / 'manifests').glob('*.sha256'))}

class BuildWithNotebooks(build_py):
    "build_py that also copies `PACKAGED` into the built package (pat_nbdev/notebooks/, pat_nbdev/paper/, pat_nbdev/manifests/)."
    def run(self):
        super().run()
        for folder, files in PACKAGED.items():
            dest = Path(self.build_lib) / cfg['lib_path'] / folder
            dest.mkdir(parents=True, exist_ok=True)
            for f in files: shutil.copy(f, dest)

setuptools.setup(
    cmdclass={'build_py': BuildWithNotebooks},
    name=cfg['lib_name'],
    license=lic_name,
    classifiers=['Development Status :: ' + statuses[int(cfg['status'])],
                 'Intended Audience :: ' + cfg['audience'].title(),
                 'License :: ' + lic_classifier,
                 'Natural Language :: ' + cfg['language'].title()]
                + ['Programming Language :: Python :: ' + o for o in py_versions[py_versions.index(min_python):]],
    url=cfg['git_url'],
    packages=setuptools.find_packages(include=['pat_nbdev', 'pat_nbdev.*']),
    include_package_data=True,
    install_requires=requirements,
    extras_require={'dev': dev_requirements},
    dependency_links=cfg.get('dep_links', '').split(),
    python_requires='>=' + cfg['min_python'],
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    zip_safe=False,
    entry_points={'console_scripts': cfg.get('console_scripts', '').split('\n'),
                  'nbdev': [f'{cfg.get("lib_path")}={cfg.get("lib_path")}._modidx:d']},
    version=cfg['version'],
    author=cfg['author'], author_email=cfg['author_email'],
    description=cfg['description'], keywords=cfg['keywords'],
)
