// An offline build generates and compiles against the freshly built plugin and runtime.
def log = new File(basedir, 'build.log').text
assert !log.contains('Downloading from central')
assert new File(basedir, 'target/classes/dev/it/Offline.class').isFile()
