# A CPU stand-in for NVIDIA's tritonserver image, built without any registry: Debian 12 (a local image made
# with debootstrap, deploy/stack.py) with Python 3.11, and the tritonserver build that ships inside the
# nvidia-pytriton wheel, laid out as NVIDIA lays it out (/opt/tritonserver/{bin,lib,backends}) so that the
# serving stage of deploy/Dockerfile runs on either base unchanged.
ARG DEBIAN_IMAGE=localhost/llmrec/debian:12
FROM ${DEBIAN_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-pip libpython3.11 curl ca-certificates libgomp1 \
 && rm -rf /var/lib/apt/lists/*
COPY artifacts/deploy/wheelhouse/tritonserver/ /tmp/tritonserver/
RUN set -e; cd /tmp/tritonserver; python3 -m zipfile -e nvidia_pytriton-*.whl wheel; \
    mkdir -p /opt/tritonserver/backends; \
    mv wheel/pytriton/tritonserver/bin /opt/tritonserver/bin; \
    mv wheel/nvidia_pytriton.libs /opt/tritonserver/lib; \
    mv wheel/pytriton/tritonserver/backends/python /opt/tritonserver/backends/python; \
    mv wheel/pytriton/tritonserver/python_backend_stubs/3.11/triton_python_backend_stub /opt/tritonserver/backends/python/; \
    chmod +x /opt/tritonserver/bin/* /opt/tritonserver/backends/python/triton_python_backend_stub; \
    cd /; rm -rf /tmp/tritonserver
ENV PATH=/opt/tritonserver/bin:$PATH \
    LD_LIBRARY_PATH=/opt/tritonserver/lib
