# The fake GitLab from the tests crate (tests/src/bin/fake-gitlab.rs), for the compose demo.
ARG BASE=drover/base:bookworm
FROM ${BASE}
COPY fake-gitlab /usr/bin/fake-gitlab
USER nobody:nogroup
EXPOSE 8080
ENTRYPOINT ["/usr/bin/fake-gitlab"]
CMD ["--listen", "0.0.0.0:8080"]
