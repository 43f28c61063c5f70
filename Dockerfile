# One image for every Warmi process; the command picks the process:
#   docker run IMAGE serve cases|notifications|referrals|gateway
#   docker run IMAGE migrate
FROM python:3.11-slim

# WARMI_HOME: where a process would keep local files (a SQLite fallback, a key
# file). Containers get database URLs and keys from the environment, so nothing
# should land there; it is a writable place all the same.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    WARMI_HOME=/var/lib/warmi

# A fixed numeric uid/gid: Kubernetes' runAsNonRoot can only verify a numeric USER.
RUN groupadd --system --gid 10001 warmi \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/warmi \
        --create-home --shell /usr/sbin/nologin warmi

WORKDIR /src
# Only what the package is built from; tests, docs and deploy stay out of the image.
COPY pyproject.toml constraints.txt ./
COPY contracts ./contracts
COPY servicekit ./servicekit
COPY services ./services
COPY warmi ./warmi
# constraints.txt pins every dependency to the versions the test suite ran with.
RUN pip install --no-cache-dir -c constraints.txt . \
    && rm -rf build ./*.egg-info

WORKDIR /var/lib/warmi
USER 10001:10001

# gateway HTTP; metrics of cases, notifications, referrals, gateway
EXPOSE 8000 9101 9102 9103 9104

ENTRYPOINT ["warmi"]
CMD ["--help"]
