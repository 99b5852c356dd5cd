// The build fails with the checker's diagnostic exactly as `moe check` prints it, once, help included.
def log = new File(basedir, 'build.log').text.replace('\r\n', '\n')
def expected = '''[ERROR] src/main/moe/dev/it/routed.moe:4:11: error: `top_k` (9) exceeds the routed experts (4) [MOE0301]
  4 |     top_k 9
    |           ^
    = help: set `top_k` to at most 4, or declare more routed experts
'''
assert log.contains(expected)
assert log.count('[MOE0301]') == 1
assert log.contains('moe: 1 error in the .moe files under')
assert !log.contains('internal error')
assert !new File(basedir, 'target/generated-sources/moe/dev/it/Routed.java').exists()
