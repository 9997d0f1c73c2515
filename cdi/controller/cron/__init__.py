"""DataImportCron: keep a golden image fresh. :mod:`.schedule` says when to look,
:mod:`.poll` what the source holds now (a digest), :mod:`.imports` the DataVolumes that import
each version and their garbage collection, :mod:`.reconciler` ties them to the cron's status and
its DataSource."""
