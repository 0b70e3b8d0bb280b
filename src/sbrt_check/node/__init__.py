"""The DICOM node: a storage SCP that checks plans as a planning system sends them.

Why a package of its own: deciding who may connect and what a connection may send (`gate`),
receiving (network, `scp`), keeping what was received (`store`), deciding when a plan is
whole (`assembly`) and checking it (`worker`, in other processes) are five jobs with
different failure modes; `pacs` fetches plans from an archive for the audit. pynetdicom is
imported only here, so `sbrt-check check` never pays for it.
"""
