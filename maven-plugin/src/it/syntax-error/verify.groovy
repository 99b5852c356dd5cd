// The build fails with the diagnostic exactly as `moe check` prints it, once, and writes nothing.
def log = new File(basedir, 'build.log').text.replace('\r\n', '\n')
def expected = '''[ERROR] src/main/moe/dev/it/broken.moe:3:13: error: found `8`, expected one of: <identifier>, `*`, `+`, `-`, `/`, `ffn`, `layers`, `moe`, `x`, `}` [MOE0001]
  3 |   context 8 8
    |             ^
'''
assert log.contains(expected)
assert log.count('broken.moe:3:13') == 1
assert log.count('[MOE0001]') == 1
assert log.contains('moe: 1 error in the .moe files under')
assert log.contains('BUILD FAILURE')
assert !log.contains('internal error')
assert !new File(basedir, 'target/generated-sources/moe/dev/it/Broken.java').exists()
