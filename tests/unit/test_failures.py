"""scripts/failures.py, the part of scripts/test.sh that names each failing
test and prints the tail of its output, run on a real ctest tree with one
passing and one failing test."""
import os
import subprocess
import sys
import tempfile
import unittest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SCRIPT = os.path.join(ROOT, "scripts", "failures.py")


class Failures(unittest.TestCase):
    def run_ctest(self, src, body):
        with open(os.path.join(src, "CMakeLists.txt"), "w") as f:
            f.write("cmake_minimum_required(VERSION 3.16)\nproject(t NONE)\nenable_testing()\n"
                    + body)
        b = os.path.join(src, "b")
        subprocess.run(["cmake", "-S", src, "-B", b], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["ctest"], cwd=b, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return b

    def summary(self, tree, tail):
        return subprocess.run([sys.executable, SCRIPT, tree, str(tail)], check=True,
                              capture_output=True, text=True).stdout

    def test_names_the_failing_test_and_prints_its_last_lines(self):
        with tempfile.TemporaryDirectory() as d:
            body = ('add_test(NAME good.one COMMAND sh -c "echo fine")\n'
                    'add_test(NAME bad.one COMMAND sh -c '
                    '"for i in 1 2 3 4 5 6 7 8 9; do echo line$i; done; exit 3")\n')
            out = self.summary(self.run_ctest(d, body), 3)
        lines = out.splitlines()
        self.assertEqual(lines[0], "FAILED: b bad.one (last 3 of 9 lines of its output)", out)
        self.assertEqual(lines[1:], ["    | line7", "    | line8", "    | line9"])
        self.assertNotIn("good.one", out)

    def test_prints_nothing_when_all_pass(self):
        with tempfile.TemporaryDirectory() as d:
            out = self.summary(self.run_ctest(d, 'add_test(NAME ok COMMAND true)\n'), 40)
        self.assertEqual(out, "")


if __name__ == "__main__":
    unittest.main()
