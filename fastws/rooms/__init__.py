"""Durable rooms: one live instance per (class, name), serial events, SQLite storage, alarms,
hibernation and fan-out.

    class Chat(Room):
        def on_message(self, ws, message):
            self.broadcast(message)

    app = RoomRouter(Chat)          # fastws serve module:app
"""

from fastws.rooms.room import AlarmInfo, AttachmentTooLarge, Room, RoomSocket
from fastws.rooms.router import RoomRouter
from fastws.rooms.storage import Storage, StorageError, StorageFull, Transaction

__all__ = [
    "AlarmInfo",
    "AttachmentTooLarge",
    "Room",
    "RoomRouter",
    "RoomSocket",
    "Storage",
    "StorageError",
    "StorageFull",
    "Transaction",
]
