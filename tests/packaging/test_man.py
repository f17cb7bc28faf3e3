"""The man pages (docs/man): they render without a warning, and they cover
what they promise.

- every page: `groff -mdoc -ww -z` and `man --warnings -l` print nothing
  (and `mandoc -T lint`, when mandoc is installed);
- keygate.conf(5) documents every key of the config table
  (module/core/kgc_config.c);
- libkeygate(3) names every exported kg_* function of include/keygate.h, and
  debian/libkeygate-dev.links gives each its man3 link, and every status;
- ngx_http_keygate_module(8) every directive and variable of module/nginx;
- the pages the packages install (debian/*.manpages) exist.
"""

import glob
import os
import re
import shutil
import subprocess
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
MAN = os.path.join(REPO, "docs", "man")
PAGES = sorted(p for p in glob.glob(os.path.join(MAN, "*.[1-8]")))


def read(*parts):
    with open(os.path.join(REPO, *parts)) as f:
        return f.read()


class ManPages(unittest.TestCase):
    def test_pages_exist(self):
        names = {os.path.basename(p) for p in PAGES}
        for want in ("keygated.8", "keygate.1", "keygate.conf.5", "libkeygate.3",
                     "ngx_http_keygate_module.8"):
            self.assertIn(want, names)

    def test_render_without_warnings(self):
        env = dict(os.environ, LC_ALL="C.UTF-8", MANWIDTH="80")
        for page in PAGES:
            with self.subTest(page=os.path.basename(page)):
                p = subprocess.run(["groff", "-mdoc", "-ww", "-z", page], capture_output=True,
                                   text=True, env=env, timeout=30)
                self.assertEqual((p.returncode, p.stdout + p.stderr), (0, ""))
                if shutil.which("man"):
                    p = subprocess.run(["man", "--warnings", "-l", page], capture_output=True,
                                       text=True, env=env, timeout=30)
                    self.assertEqual(p.stderr, "")
                    self.assertIn("NAME", p.stdout)
                if shutil.which("mandoc"):
                    p = subprocess.run(["mandoc", "-T", "lint", "-W", "warning", page],
                                       capture_output=True, text=True, timeout=30)
                    self.assertEqual(p.stdout + p.stderr, "")

    def test_every_config_key_documented(self):
        table = read("module", "core", "kgc_config.c")
        body = table[table.index("static const key_rule keys[]"):]
        body = body[:body.index("};")]
        keys = re.findall(r'"([a-z_]+)"', body)
        self.assertGreater(len(keys), 10)
        page = read("docs", "man", "keygate.conf.5")
        documented = set(re.findall(r"^\.It Ic ([a-z_]+)", page, re.M))
        self.assertEqual(sorted(set(keys) - documented), [], "keys missing from keygate.conf.5")
        self.assertEqual(sorted(documented - set(keys)), [], "keygate.conf.5 documents unknown keys")

    def test_every_kg_function_documented_and_linked(self):
        header = read("include", "keygate.h")
        funcs = set(re.findall(r"^KG_EXPORT[^;(]*?\b(kg_[a-z_]+)\s*\(", header, re.M))
        self.assertGreater(len(funcs), 10)
        page = read("docs", "man", "libkeygate.3")
        named = set(re.findall(r"^\.Nm (kg_[a-z_]+)", page, re.M))
        synopsis = set(re.findall(r"^\.F[no] (kg_[a-z_]+)", page, re.M))
        self.assertEqual(sorted(funcs - named), [], "missing from NAME")
        self.assertEqual(sorted(funcs - synopsis), [], "missing from SYNOPSIS")
        links = set(re.findall(r"man3/(kg_[a-z_]+)\.3$", read("debian", "libkeygate-dev.links"), re.M))
        self.assertEqual(sorted(funcs - links), [], "missing from debian/libkeygate-dev.links")

    def test_every_nginx_directive_and_variable_documented(self):
        names = set()
        for f in glob.glob(os.path.join(REPO, "module", "nginx", "*.c")):
            with open(f) as fh:
                names |= set(re.findall(r'ngx_string\("(keygate_[a-z_]+)"\)', fh.read()))
        self.assertIn("keygate_service", names)
        page = read("docs", "man", "ngx_http_keygate_module.8")
        documented = set(re.findall(r"^\.It Ic (keygate_[a-z_]+)", page, re.M))
        documented |= set(re.findall(r"\$(keygate_[a-z_]+)", page))
        documented |= set(re.findall(r"^\.Ql (keygate_[a-z_]+)", page, re.M))  # the zone
        self.assertEqual(sorted(names - documented), [])

    def test_every_status_documented(self):
        header = read("include", "keygate.h")
        enum = header[header.index("typedef enum kg_status"):]
        enum = enum[:enum.index("} kg_status;")]
        statuses = set(re.findall(r"^\s*(KG_[A-Z_]+)", enum, re.M))
        self.assertIn("KG_REQUEST_ID_CONFLICT", statuses)
        page = read("docs", "man", "libkeygate.3")
        rv = page[page.index(".Sh RETURN VALUES"):]
        rv = rv[:rv.index(".Sh ", 5)]
        documented = set(re.findall(r"^\.It Dv (KG_[A-Z_]+)", rv, re.M))
        self.assertEqual(sorted(statuses - documented), [], "missing from RETURN VALUES")

    def test_packaged_pages_exist(self):
        for f in glob.glob(os.path.join(REPO, "debian", "*.manpages")):
            with open(f) as fh:
                for line in fh:
                    line = line.strip()
                    if line:
                        self.assertTrue(os.path.exists(os.path.join(REPO, line)), line)


if __name__ == "__main__":
    unittest.main()
