# Minimal runner image for promptintern's Docker sandbox backend (promptintern/sandbox/docker.py).
#   docker build -t promptintern-sandbox:latest -f promptintern/sandbox/runner.Dockerfile promptintern/sandbox
# The backend adds --network=none --read-only --cap-drop=ALL --security-opt=no-new-privileges,
# pids/memory limits, a tmpfs /tmp and --user 65534:65534 at run time.
FROM python:3.11-slim

# Nothing the programs need comes from pip; drop the installers to shrink the attack surface.
RUN python -m pip uninstall -y pip setuptools wheel >/dev/null 2>&1 || true \
    && rm -rf /root/.cache /tmp/*

ENV LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1
USER 65534:65534
WORKDIR /tmp
CMD ["python", "-c", "print('promptintern sandbox runner')"]
