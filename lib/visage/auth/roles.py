"""The roles and the one table of the least role each RPC needs. A test checks
that every RPC in the protos is in RPC_ROLES; an RPC missing from it (a new one
someone forgot) is refused to everyone but admins rather than left open."""
from __future__ import annotations

import enum


class Role(enum.IntEnum):
    """Each role may do everything the roles below it may."""
    VIEWER = 1    # read faces, personas, images, models, events; classify
    LABELLER = 2  # + label / unlabel faces, create / rename / delete personas (erasing their faces: admin)
    OPERATOR = 3  # + ingest, train, activate / pin model versions, reclassify
    ADMIN = 4     # everything, including erasure

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, value: str) -> "Role":
        try:
            return cls[value.strip().upper()]
        except KeyError:
            raise ValueError(f"unknown role {value!r}: one of {', '.join(r.label for r in cls)}") from None


# The one reading of a token's role claim, at both doors (the services: claim_role; Envoy's
# rbac: visage_gateway.envoy_config builds its matchers from the same names and separators):
# a list of names, or one string of names separated by these characters. Names match
# exactly (no trimming, no case folding: "admin " or "Admın" is no role); unknown names
# (other applications' roles in the same claim) are ignored.
ROLE_NAME_SEPARATORS = " ,"


def claim_role(values: object) -> "Role | None":
    """The highest role the claim's value names exactly (a list of names or one string
    of names separated by ROLE_NAME_SEPARATORS); None when it names none."""
    if isinstance(values, str):
        names = values
        for separator in ROLE_NAME_SEPARATORS[1:]:
            names = names.replace(separator, ROLE_NAME_SEPARATORS[0])
        values = names.split(ROLE_NAME_SEPARATORS[0])
    if not isinstance(values, list):
        return None
    by_name = {role.label: role for role in Role}
    return max((by_name[value] for value in values if isinstance(value, str) and value in by_name), default=None)


# Reflection and health answer anyone (load balancers, grpcurl `list`).
OPEN_PREFIXES = ("/grpc.reflection.", "/grpc.health.v1.Health/")

_Q, _C, _I, _T = ("/visage.v1.QueryService/", "/visage.v1.ClassifyService/", "/visage.v1.IngestService/",
                  "/visage.v1.TrainService/")
RPC_ROLES: dict[str, Role] = {
    _Q + "CreatePersona": Role.LABELLER,
    _Q + "GetPersona": Role.VIEWER,
    _Q + "ListPersonas": Role.VIEWER,
    _Q + "UpdatePersona": Role.LABELLER,
    _Q + "DeletePersona": Role.LABELLER,
    _Q + "ErasePersona": Role.LABELLER,  # as DeletePersona (erase_faces needs admin)
    _Q + "ListPersonaFaces": Role.VIEWER,
    _Q + "LabelFace": Role.LABELLER,
    _Q + "UnlabelFace": Role.LABELLER,
    _Q + "GetFace": Role.VIEWER,
    _Q + "ListUnknownFaces": Role.VIEWER,
    _Q + "GetFaceCrop": Role.VIEWER,
    _Q + "ListImages": Role.VIEWER,
    _Q + "GetImage": Role.VIEWER,
    _Q + "GetImageContent": Role.VIEWER,
    _Q + "WatchEvents": Role.VIEWER,
    _Q + "DeleteImage": Role.ADMIN,    # erasure
    _Q + "DeleteFace": Role.ADMIN,     # erasure
    _Q + "ExportPersona": Role.ADMIN,  # everything held about a person, embeddings included
    _Q + "Backup": Role.OPERATOR,  # the whole store, to restore it (issue 26); the local key works too
    _Q + "ListFaceClusters": Role.VIEWER,
    _Q + "BatchLabelFaces": Role.LABELLER,
    _Q + "MergePersonas": Role.LABELLER,
    _Q + "SetFaceHidden": Role.LABELLER,
    _Q + "SetPersonaHidden": Role.LABELLER,
    _C + "Classify": Role.VIEWER,
    _C + "ClassifyEmbeddings": Role.VIEWER,
    _C + "ClassifyStream": Role.VIEWER,
    _C + "Reclassify": Role.OPERATOR,
    _C + "VerifyFaces": Role.VIEWER,       # like Classify: answers about faces, names no one new
    _C + "FindSimilarFaces": Role.VIEWER,  # like Classify; erased faces are never answered
    _I + "IngestImage": Role.OPERATOR,
    _I + "IngestImages": Role.OPERATOR,
    _I + "AddFace": Role.LABELLER,  # a face the detector missed, drawn by a person who labels
    _T + "StartTraining": Role.OPERATOR,
    _T + "GetTrainingJob": Role.VIEWER,
    _T + "ListTrainingJobs": Role.VIEWER,
    _T + "WatchTrainingJobs": Role.VIEWER,
    _T + "ListModelVersions": Role.VIEWER,
    _T + "GetModelVersion": Role.VIEWER,
    _T + "GetActiveModelVersion": Role.VIEWER,
    _T + "ActivateModelVersion": Role.OPERATOR,
    _T + "ReleaseModelPin": Role.OPERATOR,
}


def is_open(method: str) -> bool:
    return method.startswith(OPEN_PREFIXES)


def least_role(method: str) -> Role:
    """The least role that may call `method` (a gRPC path); unknown methods need admin."""
    return RPC_ROLES.get(method, Role.ADMIN)
