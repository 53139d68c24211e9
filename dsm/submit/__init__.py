"""``dsm submit`` and ``dsm jobs``: run any dsm command on a Ray cluster as a Ray Job.

- :mod:`dsm.submit.ids`: deterministic submission ids (the same command -> the same job);
- :mod:`dsm.submit.runtime_env`: the job's working_dir, excludes, pip and environment;
- :mod:`dsm.submit.client`: the Job Submission client with a bounded-time reachability probe;
- :mod:`dsm.submit.cli`: the subcommands, registered by :func:`dsm.submit.cli.register`.

Ray is imported lazily, inside the functions that talk to the cluster.
"""
