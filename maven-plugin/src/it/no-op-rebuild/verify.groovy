// The first build generates; the second checks nothing and writes nothing.
def log = new File(basedir, 'build.log').text
def first = log.indexOf('moe: checked 1 .moe file, wrote 1 Java file to ')
def second = log.indexOf('moe: 1 .moe file up to date')
assert first >= 0
assert second > first
assert log.count('moe: checked') == 1
assert new File(basedir, 'target/generated-sources/moe/dev/it/Dense.java').isFile()
